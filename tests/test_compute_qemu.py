"""Compute on a real hypervisor: libvirtd with qemu under TCG (`virt_type=qemu`), started
here and stopped by PID, on a socket of its own. The guest is the boot-sector disk made by
`symphonyd.compute.testimage` (nothing is downloaded): its marker must reach
`instance console-log`; a stop presses the ACPI power button, which the boot sector acts
on (a graceful power-off, nothing forced), `--force` powers off at once; a live disk
hot-plug; a guest destroyed behind symphonyd's back shows
`stopped`; a restart of symphonyd leaves a running guest alone; removal leaves nothing in
libvirt or on disk. Needs root and the packages `scripts/bootstrap --test` installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from symphonyd.compute.testimage import MARKER, write_image
from tests import nodes
from tests.libvirtd import TOOLS, Libvirtd, running_libvirtd
from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.privileged]


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    if os.geteuid() != 0:
        pytest.skip("starts libvirtd: needs root (CI runs as root)")
    for tool in TOOLS:
        assert shutil.which(tool), f"{tool} is missing: run scripts/bootstrap --test"
    with running_libvirtd(tmp_path_factory.mktemp("libvirtd")) as daemon:
        yield daemon


def run_json(node: NodeProcess, *args: str) -> Any:
    return nodes.run_json(node, *args, timeout=180)


def virsh(uri: str, *args: str) -> str:
    result = subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def traversable(tmp_path: Path) -> Iterator[None]:
    """qemu runs as libvirt-qemu: it must pass through pytest's 0700 temp dirs to reach
    the node's volumes (the data dir itself is 0711). Restored afterwards."""
    dirs = [p for p in [tmp_path, *tmp_path.parents] if p != Path("/") and p != Path("/tmp")]
    modes = {p: os.stat(p).st_mode & 0o777 for p in dirs}
    for path, mode in modes.items():
        os.chmod(path, mode | 0o011)
    try:
        yield
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)


def test_a_real_guest_boots_stops_and_goes(
    libvirtd: Libvirtd, traversable: None, nodeset: NodeSet, tmp_path: Path
) -> None:
    libvirt_uri = libvirtd.uri
    (n1,) = nodeset.form(1)
    run_json(n1, "service", "new")
    service = run_json(
        n1, "service", "new", "compute", "--uri", libvirt_uri, "-o", "virt_type=qemu"
    )
    assert service["options"] == {"uri": libvirt_uri, "virt_type": "qemu"}
    listed = run_json(n1, "service", "show", service["id"])
    assert listed["capacity"]["virt_type"] == "qemu" and listed["health"]["ok"]
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    run_json(n1, "image", "new", "boot sector", "boot", str(disk))
    made = run_json(n1, "instance", "create", "vm", "--image", "boot", "--memory", "64M",
                    "--disk", "16M")  # fmt: skip
    assert made["status"] == "running"
    assert virsh(libvirt_uri, "domstate", "symphonyd-vm").strip() == "running"
    xml = virsh(libvirt_uri, "dumpxml", "symphonyd-vm")
    assert "type='qemu'" in xml and "<acpi/>" in xml and "seed.iso" in xml

    def console() -> str:
        result = n1.cli("instance", "console-log", "vm")
        assert result.returncode == 0, result.stderr
        return result.stdout

    wait_until(lambda: MARKER.decode().strip() in console(), 60, "the boot sector's marker")

    # A stop presses the ACPI power button: the boot sector acts on it and powers off.
    stopped = run_json(n1, "instance", "stop", "vm", "--timeout", "30")
    assert stopped["status"] == "stopped"
    assert virsh(libvirt_uri, "domstate", "symphonyd-vm").strip() == "shut off"
    assert "forced off" not in n1.log_path.read_text()
    assert run_json(n1, "instance", "start", "vm")["status"] == "running"
    # (each start begins a new console log: the marker is this boot's)
    wait_until(lambda: MARKER.decode().strip() in console(), 60, "booted again")
    forced = run_json(n1, "instance", "stop", "vm", "--force")  # no ACPI: off at once
    assert forced["status"] == "stopped"
    assert run_json(n1, "instance", "start", "vm")["status"] == "running"

    # Powered off from inside (an ACPI button pressed behind symphonyd's back, which the
    # guest acts on): the SHUTDOWN and STOPPED events make it `stopped`, not started again.
    wait_until(lambda: MARKER.decode().strip() in console(), 60, "booted a third time")
    virsh(libvirt_uri, "shutdown", "symphonyd-vm", "--mode", "acpi")
    began = time.monotonic()
    wait_until(
        lambda: n1.client().request("GET", "/v1/instances/vm")["status"] == "stopped",
        15,
        "stopped after the guest powered itself off",
    )
    print(f"stopped recorded {time.monotonic() - began:.2f} s after the ACPI button")
    assert n1.client().request("GET", "/v1/instances/vm")["power"] == "stopped"
    assert run_json(n1, "instance", "start", "vm")["status"] == "running"

    # Destroyed behind symphonyd's back: the lifecycle event makes it `stopped`.
    virsh(libvirt_uri, "destroy", "symphonyd-vm")
    began = time.monotonic()
    wait_until(
        lambda: n1.client().request("GET", "/v1/instances/vm")["status"] == "stopped",
        10,
        "stopped after a destroy behind symphonyd's back",
    )
    print(f"stopped recorded {time.monotonic() - began:.2f} s after the destroy")
    record = n1.client().request("GET", "/v1/instances/vm")
    assert record["power"] == "stopped" and "outside symphonyd" in record["status_message"]
    assert run_json(n1, "instance", "start", "vm")["status"] == "running"

    # A data volume is hot-plugged into the running guest (acpi makes it possible).
    data = run_json(n1, "volume", "create", "data", "--size", "8M")
    attached = n1.cli("volume", "attach", "data", "vm")
    assert attached.returncode == 0, attached.stderr
    assert "(live)" in attached.stdout
    blocks = virsh(libvirt_uri, "domblklist", "symphonyd-vm")
    assert "vdb" in blocks and data["id"] in blocks

    # A restart of symphonyd does not touch the running guest.
    domain_id = virsh(libvirt_uri, "domid", "symphonyd-vm").strip()
    n1.stop()
    n1.start()
    time.sleep(2)  # give the restarted agent passes to (not) act
    assert virsh(libvirt_uri, "domid", "symphonyd-vm").strip() == domain_id
    assert n1.client().request("GET", "/v1/instances/vm")["status"] == "running"

    # libvirtd restarts (the guest keeps running): the agent notices the lost
    # connection, connects again and follows the events of the new one.
    libvirtd.restart()
    assert virsh(libvirt_uri, "domid", "symphonyd-vm").strip() == domain_id
    wait_until(lambda: "connection was lost" in n1.log_path.read_text(), 30, "the loss noticed")
    virsh(libvirt_uri, "destroy", "symphonyd-vm")
    wait_until(
        lambda: n1.client().request("GET", "/v1/instances/vm")["status"] == "stopped",
        10,
        "stopped after a destroy on the new connection",
    )
    assert run_json(n1, "instance", "start", "vm")["status"] == "running"

    folder = n1.data_dir / "compute" / "instances" / made["id"]
    root = n1.data_dir / "volumes" / "default" / f"{made['root_volume_id']}.raw"
    assert folder.exists() and root.exists()
    removed = n1.cli("instance", "rm", "vm")
    assert removed.returncode == 0, removed.stderr
    assert "symphonyd-vm" not in virsh(libvirt_uri, "list", "--all", "--name").split()
    assert not folder.exists()
    wait_until(lambda: not root.exists(), 15, "the root volume removed")
    wait_until(  # the data volume goes with it (no --keep-volumes)
        lambda: n1.cli("volume", "show", "data").returncode == 1, 15, "the data volume removed"
    )


FOREIGN_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64'>hvm</type></os>
  {metadata}
</domain>"""


def test_a_domain_symphonyd_did_not_define_is_left_alone_and_orphans_go(
    libvirtd: Libvirtd, nodeset: NodeSet, tmp_path: Path
) -> None:
    """Adoption: on a hypervisor with domains already on it, the compute agent reports a
    domain without symphonyd's metadata and never touches it; a domain with symphonyd's
    metadata whose instance record does not exist (left by a lost cluster) is removed."""
    from symphonyd.compute.domain_xml import NAMESPACE, domain_uuid

    libvirt_uri = libvirtd.uri
    orphan_id = "0" * 24 + "deadbeef"
    ghost_metadata = (  # as symphonyd writes it: the UUID derives from the instance id
        f"<uuid>{domain_uuid(orphan_id)}</uuid>"
        f"<metadata><sym:instance xmlns:sym='{NAMESPACE}'><sym:id>{orphan_id}</sym:id>"
        "<sym:name>ghost</sym:name></sym:instance></metadata>"
    )
    domains = {"legacy-app": "", "symphonyd-ghost": ghost_metadata}
    for name, metadata in domains.items():
        xml = tmp_path / f"{name}.xml"
        xml.write_text(FOREIGN_DOMAIN.format(name=name, metadata=metadata))
        virsh(libvirt_uri, "define", str(xml))
    try:
        (n1,) = nodeset.form(1)
        run_json(n1, "service", "new")
        run_json(n1, "service", "new", "compute", "--uri", libvirt_uri, "-o", "virt_type=qemu")

        def names() -> list[str]:
            return virsh(libvirt_uri, "list", "--all", "--name").split()

        wait_until(lambda: "symphonyd-ghost" not in names(), 30, "the orphan removed")
        assert "legacy-app" in names()
        log = n1.log_path.read_text()
        assert "domain legacy-app was not defined by symphonyd; left alone" in log
        assert f"removed domain of instance {orphan_id}" in log
        assert n1.client().request("GET", "/v1/instances")["instances"] == []
        time.sleep(2)  # later passes (events, the backstop) leave it alone too
        assert "legacy-app" in names()
    finally:
        for name in domains:
            subprocess.run(
                ["virsh", "-c", libvirt_uri, "undefine", name],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
