"""The libvirt compute driver on libvirt's real test driver (in-process, one isolated node
per test's data dir), and the domain XML it writes, defined there to prove libvirt takes it.

Domains live in the test driver's connection: `driver.close()` at the end of each test
discards them, also on failure. Event tests close their driver on their own loop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from symphonyd.compute.domain_xml import (
    NAMESPACE,
    add_disk,
    domain_xml,
    parse_domain,
    parse_metadata,
    remove_disk,
)
from symphonyd.compute.driver import (
    DiskSpec,
    DomainEvent,
    DomainExists,
    DomainSpec,
    NoSuchDomain,
    NotSupported,
)
from symphonyd.compute.libvirt import LibvirtDriver
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError

pytest.importorskip("libvirt", reason="libvirt-python needs libvirt0")

MiB, GiB = 1 << 20, 1 << 30
IID = "0123456789abcdef0123456789abcdef"
IID2 = "fedcba9876543210fedcba9876543210"
REPO = Path(__file__).resolve().parent.parent


def spec(tmp_path: Path, instance_id: str = IID, name: str = "web", **kw: object) -> DomainSpec:
    values: dict = {
        "instance_id": instance_id,
        "name": name,
        "vcpus": 2,
        "memory": GiB,
        "disks": (DiskSpec(str(tmp_path / f"{name}.qcow2"), "qcow2", "vda", "vol-root"),),
        "console_log": str(tmp_path / f"{name}.log"),
        "seed": str(tmp_path / f"{name}-seed.iso"),
    }
    values.update(kw)
    return DomainSpec(**values)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[LibvirtDriver]:
    made = LibvirtDriver("", str(tmp_path / "node"), test_cpus=4, test_memory=8 * GiB)
    try:
        yield made
    finally:
        made.close()


# -- domain XML ------------------------------------------------------------------------------


def find(root: ET.Element, path: str) -> ET.Element:
    found = root.find(path)
    assert found is not None, f"no {path}"
    return found


def test_domain_xml_reads_back_as_asked(tmp_path: Path) -> None:
    s = spec(tmp_path, max_vcpus=4, max_memory=2 * GiB, network="bridge=br0")
    root = ET.fromstring(domain_xml(s, "qemu", "q35"))
    assert root.get("type") == "qemu" and root.findtext("name") == "symphonyd-web"
    assert root.findtext("uuid") == "01234567-89ab-cdef-0123-456789abcdef"
    assert root.find("features/acpi") is not None and root.find("devices/graphics") is None
    assert find(root, "os/type").attrib == {"arch": "x86_64", "machine": "q35"}
    assert find(root, "os/boot").get("dev") == "hd"
    assert root.findtext("memory") == str(2 * GiB // 1024)
    assert root.findtext("currentMemory") == str(GiB // 1024)
    assert find(root, "vcpu").get("current") == "2" and root.findtext("vcpu") == "4"
    assert [root.findtext(f"on_{e}") for e in ("poweroff", "reboot", "crash")] == [
        "destroy",
        "restart",
        "destroy",
    ]
    assert root.findtext(f"metadata/{{{NAMESPACE}}}instance/{{{NAMESPACE}}}name") == "web"
    interface = find(root, "devices/interface")
    assert interface.get("type") == "bridge" and find(interface, "source").get("bridge") == "br0"
    assert find(interface, "model").get("type") == "virtio"
    disk, cdrom = root.findall("devices/disk")
    assert disk.get("type") == "file" and find(disk, "source").get("file") == s.disks[0].path
    assert find(disk, "target").attrib == {"dev": "vda", "bus": "virtio"}
    assert find(disk, "driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert disk.findtext("serial") == "vol-root"
    assert cdrom.get("device") == "cdrom" and cdrom.find("readonly") is not None
    assert find(cdrom, "target").attrib == {"dev": "sda", "bus": "sata"}
    assert find(cdrom, "source").get("file") == s.seed
    for kind in ("serial", "console"):
        assert find(root, f"devices/{kind}").get("type") == "file"
        assert find(root, f"devices/{kind}/source").get("path") == s.console_log
    test_xml = domain_xml(s, "test", None)
    assert ET.fromstring(test_xml).get("type") == "test" and parse_metadata(test_xml) == IID
    assert find(ET.fromstring(test_xml), "os/type").get("machine") is None


def test_domain_xml_escapes_values_and_picks_block_sources(tmp_path: Path) -> None:
    disks = (
        DiskSpec("/dev/vg0/lv1", "raw", "vda", "v1"),
        DiskSpec(str(tmp_path / "a'b<c>&.raw"), "raw", "vdb", "v2"),
    )
    s = spec(tmp_path, disks=disks, seed=None, network="user")
    root = ET.fromstring(domain_xml(s, "kvm", None))
    first, second = root.findall("devices/disk")  # no seed: no CD-ROM
    assert first.get("type") == "block" and find(first, "source").get("dev") == "/dev/vg0/lv1"
    assert find(second, "source").get("file") == disks[1].path
    assert find(root, "devices/interface").get("type") == "user"
    told = ET.fromstring(domain_xml(s, "kvm", None, "/usr/bin/qemu-kvm", block_devices=()))
    assert find(told, "devices/disk").get("type") == "file"
    assert find(told, "devices")[0].tag == "emulator" and told.findtext("devices/emulator") == (
        "/usr/bin/qemu-kvm"
    )
    assert parse_domain(domain_xml(s, "kvm", None)).disks == ("/dev/vg0/lv1", disks[1].path)


@pytest.mark.parametrize(
    "change",
    [
        {"network": "nat"},
        {"network": "bridge="},
        {"instance_id": "xyz"},
        {"disks": (DiskSpec("/a", "vmdk", "vda", "x"),)},
    ],
)
def test_domain_xml_refuses_what_it_cannot_express(tmp_path: Path, change: dict) -> None:
    with pytest.raises(Invalid):
        domain_xml(spec(tmp_path, **change), "qemu", None)
    with pytest.raises(Invalid):
        domain_xml(spec(tmp_path), "xen", None)


def test_disks_are_added_and_removed_in_the_definition(tmp_path: Path) -> None:
    xml = domain_xml(spec(tmp_path), "test", None)
    more = add_disk(xml, DiskSpec("/v/2.raw", "raw", "vdb", "v2"), block=False)
    assert parse_domain(more).disks == (str(tmp_path / "web.qcow2"), "/v/2.raw")
    with pytest.raises(Conflict):
        add_disk(more, DiskSpec("/v/3.raw", "raw", "vdb", "v3"), block=False)
    fewer, removed = remove_disk(more, "vda")
    assert parse_domain(fewer).disks == ("/v/2.raw",) and "web.qcow2" in removed
    with pytest.raises(NotFound):
        remove_disk(fewer, "vdz")


def test_the_test_driver_takes_the_xml_and_keeps_the_metadata(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    s = spec(tmp_path, max_vcpus=4, network="bridge=br0")
    dom = driver.connection.defineXML(domain_xml(s, "test", None))
    assert parse_metadata(dom.XMLDesc(0)) == IID and dom.UUIDString().replace("-", "") == IID
    parsed = parse_domain(dom.XMLDesc(0))
    assert (parsed.vcpus, parsed.max_vcpus, parsed.memory) == (2, 4, GiB)
    assert parse_metadata("<domain><name>x</name></domain>") is None


# -- the node --------------------------------------------------------------------------------


def test_each_data_dir_is_its_own_isolated_node(driver: LibvirtDriver, tmp_path: Path) -> None:
    other = LibvirtDriver("", str(tmp_path / "other"), test_cpus=2, test_memory=2 * GiB)
    try:
        driver.define(spec(tmp_path))
        assert [d.instance_id for d in driver.domains()] == [IID]
        assert other.domains() == []
        host = driver.host()
        assert (host.cpus, host.memory, host.virt_type) == (4, 8 * GiB, "test")
        assert (other.host().cpus, other.host().memory) == (2, 2 * GiB)
        assert host.hypervisor.startswith("TEST")
        node = Path(driver.test_node).read_text()
        assert driver.uri == f"test://{driver.test_node}" and "<cores>4</cores>" in node
    finally:
        other.close()


def test_capabilities_and_virt_type_of_the_test_driver(driver: LibvirtDriver) -> None:
    caps = driver.capabilities
    assert (caps.hotplug_disks, caps.live_resize, caps.graceful_shutdown) == (False, True, False)
    assert driver.virt_type == "test" and driver.name == "libvirt"
    with pytest.raises(Invalid, match="shared"):
        LibvirtDriver("test:///default", "/tmp")


def test_check_answers_for_the_test_driver(driver: LibvirtDriver) -> None:
    health = driver.check()
    assert health.ok and "TEST" in health.message


def test_check_of_a_missing_socket_is_one_line_and_quick(tmp_path: Path) -> None:
    far = LibvirtDriver("qemu+unix:///system?socket=/nonexistent", str(tmp_path))
    started = time.monotonic()
    health = far.check()
    assert not health.ok and "/nonexistent" in health.message and "\n" not in health.message
    assert time.monotonic() - started < 5
    assert far.capabilities.hotplug_disks and far.capabilities.graceful_shutdown
    far.close()


def test_check_of_a_silent_hypervisor_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepts (in the kernel), never answers
    far = LibvirtDriver(f"qemu+unix:///system?socket={path}", str(tmp_path))
    far.open_timeout = 0.5
    try:
        started = time.monotonic()
        health = far.check()
        assert not health.ok and "did not answer within 0.5 s" in health.message
        assert time.monotonic() - started < 3
    finally:
        listener.close()  # the abandoned attempt then fails and ends
        far.close()


# -- lifecycle -------------------------------------------------------------------------------


def state(driver: LibvirtDriver, instance_id: str = IID) -> str:
    return {d.instance_id: d.state for d in driver.domains()}[instance_id]


def test_define_start_shutdown_destroy_undefine(driver: LibvirtDriver, tmp_path: Path) -> None:
    info = driver.define(spec(tmp_path))
    assert (info.instance_id, info.name, info.state) == (IID, "symphonyd-web", "stopped")
    assert (info.vcpus, info.memory, info.disks) == (2, GiB, (str(tmp_path / "web.qcow2"),))
    driver.start(IID)
    driver.start(IID)  # already running: nothing to do
    assert state(driver) == "running"
    assert driver.domains()[0].reason == "running: booted"
    driver.shutdown(IID)  # the test driver stops at once
    assert state(driver) == "stopped"
    driver.shutdown(IID)
    driver.start(IID)
    driver.reboot(IID)
    assert state(driver) == "running"
    driver.destroy(IID)
    assert state(driver) == "stopped" and driver.domains()[0].reason == "shutoff: destroyed"
    driver.destroy(IID)  # off: nothing to do
    driver.start(IID)
    driver.undefine(IID)  # running: destroyed first
    assert driver.domains() == []
    with pytest.raises(NoSuchDomain):
        driver.undefine(IID)


def test_start_resumes_a_paused_domain(driver: LibvirtDriver, tmp_path: Path) -> None:
    driver.define(spec(tmp_path))
    driver.start(IID)
    driver.connection.lookupByUUIDString("01234567-89ab-cdef-0123-456789abcdef").suspend()
    assert state(driver) == "paused"
    driver.start(IID)
    assert state(driver) == "running"


def test_redefining_the_same_uuid_replaces_the_definition(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    driver.define(spec(tmp_path))
    info = driver.define(spec(tmp_path, vcpus=3, memory=2 * GiB))
    assert (info.vcpus, info.memory) == (3, 2 * GiB) and len(driver.domains()) == 1
    renamed = driver.define(spec(tmp_path, name="api"))
    assert renamed.name == "symphonyd-api" and len(driver.domains()) == 1
    with pytest.raises(DomainExists):
        driver.define(spec(tmp_path, instance_id=IID2, name="api"))


def test_an_unmanaged_domain_is_listed_without_an_instance_id(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    driver.define(spec(tmp_path))
    driver.connection.defineXML(
        "<domain type='test'><name>theirs</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    found = {d.name: d for d in driver.domains()}
    assert found["theirs"].instance_id is None and found["theirs"].state == "stopped"
    assert found["symphonyd-web"].instance_id == IID


def test_libvirt_errors_are_errors_of_the_tree(driver: LibvirtDriver, tmp_path: Path) -> None:
    with pytest.raises(NoSuchDomain, match=f"no domain for instance {IID}"):
        driver.start(IID)
    with pytest.raises(Invalid):
        driver.start("not-an-id")
    driver.define(spec(tmp_path))
    with pytest.raises(SymphonyError) as caught:
        driver.reboot(IID)  # not running
    assert "not running" in caught.value.message and "\n" not in caught.value.message


# -- resizing and disks ----------------------------------------------------------------------


def test_live_resize_of_a_running_domain(driver: LibvirtDriver, tmp_path: Path) -> None:
    driver.define(spec(tmp_path, max_vcpus=4, max_memory=2 * GiB))
    driver.start(IID)
    driver.set_vcpus(IID, 4, live=True)
    driver.set_memory(IID, 1536 * MiB, live=True)
    live = driver.domains()[0]
    assert (live.vcpus, live.memory, live.state) == (4, 1536 * MiB, "running")
    with pytest.raises(SymphonyError, match="exceeds maximum"):
        driver.set_vcpus(IID, 5, live=True)
    driver.destroy(IID)  # the definition changed too
    assert (driver.domains()[0].vcpus, driver.domains()[0].memory) == (4, 1536 * MiB)


def test_a_resize_that_is_not_live_grows_the_maximum(driver: LibvirtDriver, tmp_path: Path) -> None:
    driver.define(spec(tmp_path))
    driver.set_vcpus(IID, 6, live=False)
    driver.set_memory(IID, 3 * GiB, live=False)
    info = driver.domains()[0]
    assert (info.vcpus, info.memory) == (6, 3 * GiB)


def test_disks_on_the_test_driver_change_by_redefinition_not_live(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    driver.define(spec(tmp_path))
    extra = DiskSpec(str(tmp_path / "data.raw"), "raw", "vdb", "vol-data")
    driver.attach_disk(IID, extra, live=False)
    assert driver.domains()[0].disks == (str(tmp_path / "web.qcow2"), extra.path)
    with pytest.raises(Conflict):
        driver.attach_disk(IID, extra, live=False)
    driver.start(IID)
    with pytest.raises(NotSupported):
        driver.attach_disk(IID, DiskSpec("/x.raw", "raw", "vdc", "x"), live=True)
    with pytest.raises(NotSupported):
        driver.detach_disk(IID, "vdb", live=True)
    driver.detach_disk(IID, "vdb", live=False)  # the definition, for the next boot
    driver.destroy(IID)
    assert driver.domains()[0].disks == (str(tmp_path / "web.qcow2"),)
    with pytest.raises(NotFound):
        driver.detach_disk(IID, "vdq", live=False)


# -- events ----------------------------------------------------------------------------------


async def next_event(queue: asyncio.Queue[DomainEvent | None], word: str) -> DomainEvent:
    while True:
        event = await asyncio.wait_for(queue.get(), 5)
        if event is not None and event.event == word:
            return event


async def test_lifecycle_events_arrive_on_the_loop(tmp_path: Path) -> None:
    driver = LibvirtDriver("", str(tmp_path), test_cpus=2, test_memory=4 * GiB)
    queue: asyncio.Queue[DomainEvent | None] = asyncio.Queue()
    try:
        driver.check()  # a connection opened before watch() keeps its domains
        driver.watch(queue.put_nowait)
        await asyncio.to_thread(driver.define, spec(tmp_path))
        defined = await next_event(queue, "defined")
        assert (defined.instance_id, defined.name, defined.detail) == (
            IID,
            "symphonyd-web",
            "added",
        )
        await asyncio.to_thread(driver.start, IID)
        assert (await next_event(queue, "started")).detail == "booted"
        # Behind the driver's back, on its own connection (the test driver's state is there).
        driver.connection.lookupByUUIDString("01234567-89ab-cdef-0123-456789abcdef").destroy()
        stopped = await next_event(queue, "stopped")
        assert (stopped.instance_id, stopped.detail) == (IID, "destroyed")
        await asyncio.to_thread(driver.undefine, IID)
        assert (await next_event(queue, "undefined")).instance_id == IID
    finally:
        driver.close()


async def test_a_lost_connection_is_announced_and_reopened(tmp_path: Path) -> None:
    driver = LibvirtDriver("", str(tmp_path), test_cpus=2, test_memory=4 * GiB)
    events: list[DomainEvent | None] = []
    try:
        driver.watch(events.append)
        driver.define(spec(tmp_path))
        old = driver.connection
        driver._closed(old, 0, None)  # what libvirt calls when the link breaks
        assert events[-1] is None
        assert (
            driver.domains() == [] and driver.connection is not old
        )  # the test driver's new state
        driver.define(spec(tmp_path))
        await asyncio.sleep(0.1)
        assert any(e is not None and e.event == "defined" for e in events)
    finally:
        driver.close()


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or dict(os.environ),
    )


def test_events_follow_a_new_loop_once_the_old_one_is_closed(tmp_path: Path) -> None:
    """In a fresh process: libvirt takes one event implementation per process; a second
    loop (as each test has) takes it over once the first is closed."""
    done = run_python(f"""
        import asyncio
        from symphonyd.compute.driver import DiskSpec, DomainSpec
        from symphonyd.compute.libvirt import LibvirtDriver

        async def one(n):
            driver = LibvirtDriver("", "{tmp_path}/n%d" % n, test_cpus=1, test_memory=1 << 30)
            got = asyncio.Queue()
            driver.watch(got.put_nowait)
            spec = DomainSpec("{IID}", "vm", 1, 1 << 28, (), "{tmp_path}/c.log")
            await asyncio.to_thread(driver.define, spec)
            await asyncio.to_thread(driver.start, "{IID}")
            words = [(await asyncio.wait_for(got.get(), 5)).event for _ in range(2)]
            driver.close()
            return words

        print(asyncio.run(one(1)), asyncio.run(one(2)))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['defined', 'started'] ['defined', 'started']"
    assert "Traceback" not in done.stderr


def test_watch_needs_the_running_loop(driver: LibvirtDriver) -> None:
    with pytest.raises(SymphonyError, match="event loop"):
        driver.watch(lambda event: None)


def test_the_module_imports_without_libvirt0(tmp_path: Path) -> None:
    done = run_python(f"""
        import sys
        sys.modules["libvirt"] = None  # as if libvirt.so.0 were missing
        from symphonyd.compute.libvirt import LibvirtDriver
        health = LibvirtDriver("", "{tmp_path}").check()
        print(health.ok, health.message)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False libvirt-python needs the host's libvirt0: apt-get install")
