"""Compute on one real node with libvirt's in-process test driver, through the CLI: an
instance made from an image (its root volume, seed and domain), stop/start/restart, the
references that protect what it uses, bad input refused with nothing half-made, a daemon
restart (the test driver forgets its domains, as a host reboot does: they are defined and
started again), and removal leaving nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from symphonyd.compute.cloudinit import read_seed
from symphonyd.compute.testimage import write_image
from tests.nodes import NodeProcess, NodeSet, run_json, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1 << 20


def refused(node: NodeProcess, *args: str) -> str:
    result = node.cli(*args, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def instance(node: NodeProcess, ref: str) -> dict[str, Any]:
    return dict(node.client().request("GET", f"/v1/instances/{ref}"))


@pytest.fixture
def compute_node(nodeset: NodeSet, tmp_path: Path) -> NodeProcess:
    (n1,) = nodeset.form(1)
    assert run_json(n1, "service", "new")["type"] == "block"
    service = run_json(n1, "service", "new", "compute", "-o", "test_cpus=4")
    assert (service["type"], service["driver"]) == ("compute", "libvirt")
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    assert run_json(n1, "image", "new", "boot sector", "boot", str(disk))["status"] == "ready"
    return n1


def test_an_instance_is_made_runs_stops_and_goes(compute_node: NodeProcess, tmp_path: Path) -> None:
    n1 = compute_node
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "id.pub").write_bytes(public + b" me@host\n")
    before = n1.status()["revision"]
    made = run_json(
        n1, "instance", "create", "web", "--image", "boot", "--memory", "64M", "--disk", "16M",
        "--ssh-key", str(tmp_path / "id.pub"),
    )  # fmt: skip
    assert (made["status"], made["node"], made["cpus"], made["memory"]) == (
        "running",
        "n1",
        1,
        64 * MiB,
    )
    assert made["domain"] == {"vcpus": 1, "memory": 64 * MiB}
    assert "user_data" not in made and made["user_data_bytes"] > 0
    # Nor does the event stream carry it (user-data may hold passwords).
    changes = [c for _, c in n1.recorded_events(before, "instances", read_for=1.0)]
    assert changes and all(c["record"] is None or "user_data" not in c["record"] for c in changes)
    assert changes[0]["record"]["user_data_bytes"] == made["user_data_bytes"]

    # Its root volume, made from the image in the node's block pool.
    root = run_json(n1, "volume", "show", "web-root")
    assert (root["id"], root["status"], root["size"]) == (made["root_volume_id"], "ready", 16 * MiB)
    root_file = n1.data_dir / "volumes" / "default" / f"{root['id']}.raw"
    assert root_file.read_bytes()[510:512] == b"\x55\xaa"
    # Its seed: meta-data naming it, user-data installing the key.
    folder = n1.data_dir / "compute" / "instances" / made["id"]
    seed = read_seed(str(folder / "seed.iso"))
    assert f"instance-id: {made['id']}" in seed["meta-data"]
    assert "local-hostname: web" in seed["meta-data"]
    assert seed["user-data"].startswith("#cloud-config")
    assert public.decode() in seed["user-data"]

    listed = run_json(n1, "instance", "list")["instances"]
    assert [(i["name"], i["status"]) for i in listed] == [("web", "running")]
    table = n1.cli("instance", "list")
    assert table.returncode == 0 and "web" in table.stdout and "running" in table.stdout

    stopped = run_json(n1, "instance", "stop", "web", "--timeout", "5")
    assert (stopped["status"], stopped["power"]) == ("stopped", "stopped")
    assert run_json(n1, "instance", "start", "web")["status"] == "running"
    restarted = n1.cli("instance", "restart", "web")
    assert restarted.returncode == 0, restarted.stderr
    wait_until(lambda: instance(n1, "web")["restarts_done"] == 1, 10, "the reboot")
    forced = run_json(n1, "instance", "stop", "web", "--force")
    assert forced["status"] == "stopped"
    assert run_json(n1, "instance", "start", "web")["status"] == "running"
    console = n1.cli("instance", "console-log", "web")
    assert console.returncode == 0, console.stderr  # the test driver runs no guest code

    # What it uses cannot go while it exists.
    assert "used by instances: web" in refused(n1, "image", "rm", "boot")
    assert "attached to instance web" in refused(n1, "volume", "rm", "web-root")
    compute_id = next(
        s["id"] for s in run_json(n1, "service", "list")["services"] if s["type"] == "compute"
    )
    assert "still has instances: web" in refused(n1, "service", "rm", compute_id)

    gone = n1.cli("instance", "rm", "web")
    assert gone.returncode == 0, gone.stderr
    assert run_json(n1, "instance", "list")["instances"] == []
    wait_until(lambda: not root_file.exists(), 15, "the root volume removed")
    assert n1.cli("volume", "show", "web-root").returncode == 1
    assert not folder.exists()
    assert run_json(n1, "image", "rm", "boot")  # nothing uses it any more


def test_bad_input_is_refused_and_nothing_is_half_made(
    compute_node: NodeProcess, tmp_path: Path
) -> None:
    n1 = compute_node
    base = ("instance", "create")
    assert "no image 'nope'" in refused(n1, *base, "a", "--image", "nope")
    assert "invalid instance name" in refused(n1, *base, "Bad_Name", "--image", "boot")
    assert "no healthy, reachable node" in refused(n1, *base, "big", "--image", "boot",
                                                   "--cpus", "64")  # fmt: skip
    assert "memory free" in refused(n1, *base, "fat", "--image", "boot", "--memory", "9999G")
    assert "no node named 'n9'" in refused(n1, *base, "far", "--image", "boot", "--node", "n9")
    assert "smaller" in refused(n1, *base, "tiny", "--image", "boot", "--disk", "4096B")
    assert "network must be" in refused(n1, *base, "net", "--image", "boot", "--network", "nat")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#cloud-config\n" + b"#" * (64 * 1024))
    assert "64 KiB" in refused(n1, *base, "ud", "--image", "boot", "--user-data", str(big))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in refused(n1, *base, "ud", "--image", "boot", "--user-data", str(binary))
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    (tmp_path / "id").write_bytes(private)
    message = refused(n1, *base, "key", "--image", "boot", "--ssh-key", str(tmp_path / "id"))
    assert "PRIVATE key" in message
    assert private.decode().splitlines()[1] not in message
    assert run_json(n1, "instance", "list")["instances"] == []
    assert [v["name"] for v in run_json(n1, "volume", "list")["volumes"]] == []
    # the name is refused once taken
    assert run_json(n1, "instance", "create", "one", "--image", "boot", "--disk", "16M",
                    "--memory", "64M", "--no-start")["status"] == "stopped"  # fmt: skip
    assert "already exists" in refused(n1, *base, "one", "--image", "boot", "--disk", "16M")


def test_a_restarted_node_defines_and_starts_its_instances_again(
    compute_node: NodeProcess,
) -> None:
    n1 = compute_node
    run_json(n1, "instance", "create", "up", "--image", "boot", "--disk", "16M", "--memory", "64M")
    run_json(n1, "instance", "create", "down", "--image", "boot", "--disk", "16M",
             "--memory", "64M", "--no-start")  # fmt: skip
    n1.stop()
    n1.start()
    # The test driver's domains lived in the old process: both are defined again, and only
    # the one that was running is started.
    wait_until(
        lambda: n1.log_path.read_text().count("defined again") >= 2, 30, "both defined again"
    )
    wait_until(lambda: instance(n1, "up")["status"] == "running", 30, "up running")
    assert instance(n1, "down")["status"] == "stopped"
    assert os.path.exists(n1.data_dir / "compute" / "libvirt-test.xml")


def test_resize_attach_and_detach_say_when_they_apply(compute_node: NodeProcess) -> None:
    """The test driver changes vCPUs live only up to the domain's maximum and cannot
    hot-plug disks: those changes go into the definition and apply at the next start (a
    detach, when the guest next stops), and the CLI says so."""
    n1 = compute_node
    for name in ("data", "spare"):
        assert run_json(n1, "volume", "create", name, "--size", "8M")["status"] == "ready"
    small = ("--image", "boot", "--disk", "16M", "--memory", "64M")
    made = run_json(n1, "instance", "create", "app", *small)
    data_id = run_json(n1, "volume", "show", "data")["id"]

    resized = n1.cli("instance", "resize", "app", "--cpus", "2", "--memory", "128M")
    assert resized.returncode == 0, resized.stderr
    assert "2 vCPUs, 128.0 MiB" in resized.stdout and "at the next start" in resized.stdout
    record = instance(n1, "app")
    assert record["applied"]["cpus"] == 2 and record["domain"]["vcpus"] == 1
    too_big = n1.cli("instance", "resize", "app", "--cpus", "64")
    assert too_big.returncode == 1 and "cannot be resized: node n1 has" in too_big.stderr

    attached = n1.cli("volume", "attach", "data", "app")
    assert attached.returncode == 0, attached.stderr
    assert "attached at the next start" in attached.stdout
    assert instance(n1, "app")["applied"]["volumes"] == {data_id: "vdb"}
    assert "attached to instance app" in refused(n1, "volume", "rm", "data")
    assert "already attached to it" in refused(n1, "volume", "attach", "data", "app")

    # The next start runs the definition: the resize and the disk are live, nothing waits.
    run_json(n1, "instance", "stop", "app", "--force")
    started = run_json(n1, "instance", "start", "app")
    assert started["at_next_start"] == []
    wait_until(lambda: instance(n1, "app")["domain"]["vcpus"] == 2, 10, "2 vCPUs live")
    assert instance(n1, "app")["domain"]["memory"] == 128 * MiB

    detached = n1.cli("volume", "detach", "data")
    assert detached.returncode == 0, detached.stderr
    assert "detached when the instance next stops" in detached.stdout
    assert "attached to instance app" in refused(n1, "volume", "rm", "data")  # still held
    run_json(n1, "instance", "stop", "app", "--force")
    wait_until(lambda: instance(n1, "app")["applied"]["volumes"] == {}, 10, "detached")
    assert n1.cli("volume", "rm", "data").returncode == 0

    # A volume given at create is in the first definition; it decides the node.
    db = run_json(n1, "instance", "create", "db", *small, "--volume", "spare")
    spare = run_json(n1, "volume", "show", "spare")
    assert db["applied"]["volumes"] == {spare["id"]: "vdb"} and db["node"] == spare["node"]
    assert "attached to instance db" in refused(n1, "instance", "create", "x", *small,
                                                "--volume", "spare")  # fmt: skip
    assert made["id"] != db["id"]


class WithoutLibvirt(NodeProcess):
    """A node whose Python cannot load libvirt-python (as on a host without libvirt0)."""

    def __init__(self, base: Path, name: str) -> None:
        super().__init__(base, name)
        self.hide = base / "no-libvirt"
        self.hide.mkdir(exist_ok=True)
        (self.hide / "sitecustomize.py").write_text('import sys\nsys.modules["libvirt"] = None\n')

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.hide),
                                                          env.get("PYTHONPATH")]))  # fmt: skip
        return env


def test_a_host_without_libvirt_runs_everything_but_compute(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path)
    try:
        node = WithoutLibvirt(tmp_path, "n1")
        nodes.nodes.append(node)
        node.start()
        assert node.cli("init").returncode == 0
        assert run_json(node, "service", "new")["type"] == "block"
        assert run_json(node, "volume", "create", "v", "--size", "8M")["status"] == "ready"
        why = refused(node, "service", "new", "compute")
        assert (
            "the libvirt driver cannot work here: libvirt-python needs the host's libvirt0" in why
        )
        assert [s["type"] for s in run_json(node, "service", "list")["services"]] == ["block"]
    finally:
        nodes.cleanup()


def test_an_unreachable_hypervisor_is_refused_with_the_reason(nodeset: NodeSet) -> None:
    (n1,) = nodeset.form(1)
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    why = refused(n1, "service", "new", "compute", "--uri", uri)
    assert "the libvirt driver cannot work here: cannot connect to qemu+unix" in why
    assert run_json(n1, "service", "list")["services"] == []  # nothing recorded


def test_keep_volumes_keeps_data_volumes_detached(compute_node: NodeProcess) -> None:
    n1 = compute_node
    run_json(n1, "volume", "create", "keep", "--size", "8M")
    run_json(n1, "instance", "create", "k", "--image", "boot", "--disk", "16M",
             "--memory", "64M", "--volume", "keep", "--no-start")  # fmt: skip
    gone = n1.cli("instance", "rm", "k", "--keep-volumes")
    assert gone.returncode == 0, gone.stderr
    kept = run_json(n1, "volume", "show", "keep")
    assert kept["status"] == "ready"
    wait_until(lambda: n1.cli("volume", "show", "k-root").returncode == 1, 15, "root removed")
    assert n1.cli("volume", "rm", "keep").returncode == 0  # nothing holds it any more


CLASHING_HOST = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><nodes>1</nodes>
    <sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
  <domain type='test'>
    <name>symphonyd-clash</name><uuid>0f0e0d0c-0b0a-0908-0706-050403020100</uuid>
    <memory>65536</memory><os><type>hvm</type></os>
  </domain>
</node>
"""


def test_a_failed_define_fails_the_instance_and_leaves_no_seed(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    """The hypervisor already has a domain of the instance's name (another UUID): the
    definition is refused, the instance fails with the reason, its seed is gone, and
    `instance rm` removes the record and its root volume."""
    (n1,) = nodeset.form(1)
    host = n1.data_dir / "compute"
    host.mkdir(mode=0o700)
    (host / "libvirt-test.xml").write_text(CLASHING_HOST)  # what the test driver starts with
    run_json(n1, "service", "new")
    run_json(n1, "service", "new", "compute")
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    run_json(n1, "image", "new", "boot sector", "boot", str(disk))
    made = n1.cli("instance", "create", "clash", "--image", "boot", "--memory", "64M",
                  "--disk", "16M", timeout=120)  # fmt: skip
    assert made.returncode == 1 and "exists for another UUID" in made.stderr, made.stderr
    record = run_json(n1, "instance", "show", "clash")
    assert record["status"] == "failed" and "exists for another UUID" in record["status_message"]
    assert not (host / "instances" / record["id"] / "seed.iso").exists()
    root = record["root_volume_id"]
    assert root and run_json(n1, "volume", "show", root)["status"] == "ready"
    removed = n1.cli("instance", "rm", "clash", timeout=120)
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: n1.cli("volume", "show", root).returncode == 1, 30, "the root volume gone")
    assert run_json(n1, "volume", "list")["volumes"] == []
    assert not (host / "instances" / record["id"]).exists()
