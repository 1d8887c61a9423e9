"""Compute in a real 3-node cluster on libvirt's test driver: placement by capacity (a
full node is skipped, `--node` to a full node is refused with the resource that is short,
the refusal names each node's reason), the root volume made on the instance's node from an
image that node must fetch, and a node killed with kill -9: its instances show `unknown`
from the others, and their real state again once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from symphonyd.compute.testimage import write_image
from tests.nodes import NodeProcess, NodeSet, run_json, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def instance(node: NodeProcess, ref: str) -> dict[str, Any]:
    return dict(node.client().request("GET", f"/v1/instances/{ref}"))


def fully_connected(members: list[NodeProcess]) -> None:
    """Every member has its Raft connection to every other: placement asked on a node
    counts a member it has no connection to as unreachable (a follower's link to another
    follower can come up a few seconds after the join, on a loaded machine)."""
    for node in members:
        wait_until(
            lambda n=node: all(p["connected"] for p in n.status()["raft"]["peers"].values()),
            30,
            f"{node.name} connected to every member",
        )


def test_placement_by_capacity_and_a_killed_node(nodeset: NodeSet, tmp_path: Path) -> None:
    n1, n2, n3 = nodeset.form(3)
    fully_connected([n1, n2, n3])
    for node, cpus in ((n1, 1), (n2, 2)):
        run_json(node, "service", "new")
        run_json(node, "service", "new", "compute", "-o", f"test_cpus={cpus}")
    assert n1.cli("config", "set", "compute.cpu_overcommit", "1").returncode == 0
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    assert run_json(n1, "image", "new", "boot sector", "boot", str(disk))["holders"] == ["n1"]
    small = ("--image", "boot", "--disk", "16M", "--memory", "64M")

    # Two vCPUs fit only on n2, which must fetch the image for the root volume; asked on
    # n3, which has no compute service.
    wide = run_json(n3, "instance", "create", "wide", *small, "--cpus", "2")
    assert (wide["node"], wide["status"]) == ("n2", "running")
    root = run_json(n3, "volume", "show", "wide-root")
    assert (root["node"], root["status"]) == ("n2", "ready")
    # n2 is full now: an explicit --node n2 says which resource is short...
    full = n1.cli("instance", "create", "extra", *small, "--node", "n2")
    assert full.returncode == 1
    assert "node n2 cannot take instance extra: node n2 has 0 vCPUs free, 1 asked" in full.stderr
    # ... and a free choice skips it.
    narrow = run_json(n1, "instance", "create", "narrow", *small)
    assert narrow["node"] == "n1"
    nowhere = n3.cli("instance", "create", "more", *small)
    assert nowhere.returncode == 1
    assert "node n1 has 0 vCPUs free" in nowhere.stderr
    assert "node n2 has 0 vCPUs free" in nowhere.stderr
    assert [i["name"] for i in run_json(n3, "instance", "list")["instances"]] == [
        "narrow",
        "wide",
    ]

    # kill -9 the node of `narrow`: the others show it unknown, never running.
    n1.kill()
    for viewer in (n2, n3):  # each sees the loss of its own link to n1, not at once
        wait_until(
            lambda v=viewer: instance(v, "narrow")["status"] == "unknown",
            30,
            f"narrow unknown on {viewer.name}",
        )
    seen = instance(n3, "narrow")
    assert (seen["status"], seen["last_status"]) == ("unknown", "running")
    assert "n1 is unreachable" in seen["status_message"]
    assert instance(n3, "wide")["status"] == "running"
    listed = n2.cli("instance", "list")
    assert listed.returncode == 0 and "unknown" in listed.stdout
    n1.start()
    # Back: the test driver lost its domain with the process, so it is defined and started
    # again (starting, then running), and every node shows it running.
    wait_until(lambda: "defined again" in n1.log_path.read_text(), 30, "the domain defined again")
    wait_until(lambda: instance(n3, "narrow")["status"] == "running", 30, "narrow running")
    wait_until(lambda: instance(n1, "narrow")["status"] == "running", 30, "running on n1 too")


def test_move_evacuate_and_restore(nodeset: NodeSet, tmp_path: Path) -> None:
    nodes = nodeset.form(3)
    n1, n2, n3 = nodes
    for node in nodes:
        run_json(node, "service", "new")
        run_json(node, "service", "new", "compute", "-o", "test_cpus=4")
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    run_json(n1, "image", "new", "boot sector", "boot", str(disk))
    data = run_json(n1, "volume", "create", "data", "--size", "8M", "--node", "n1")
    pool = Path("volumes") / "default"
    # what a guest would have written, in the data disk's file on n1
    marker = b"written by the guest before the move"
    with open(n1.data_dir / pool / f"{data['id']}.raw", "r+b") as f:
        f.seek(4096)
        f.write(marker)
    made = run_json(n1, "instance", "create", "web", "--image", "boot", "--disk", "16M",
                    "--memory", "64M", "--volume", "data")  # fmt: skip
    assert (made["node"], made["status"]) == ("n1", "running")
    sources = [n1.data_dir / pool / f"{v}.raw" for v in (made["root_volume_id"], data["id"])]
    contents = [p.read_bytes() for p in sources]

    same = n1.cli("instance", "move", "web", "--node", "n1")
    assert same.returncode == 1 and "is on node n1 already" in same.stderr
    moved = n3.cli("instance", "move", "web", "--node", "n2")
    assert moved.returncode == 0, moved.stderr
    assert "running on node n2" in moved.stdout
    record = instance(n1, "web")
    assert (record["node"], record["status"], record["move"]) == ("n2", "running", None)
    # its volumes are on n2 now, under their names, with the same content
    root = run_json(n1, "volume", "show", "web-root")
    moved_data = run_json(n1, "volume", "show", "data")
    assert (root["node"], moved_data["node"]) == ("n2", "n2")
    assert root["id"] == record["root_volume_id"] and record["volumes"] == [moved_data["id"]]
    copies = [n2.data_dir / pool / f"{v['id']}.raw" for v in (root, moved_data)]
    assert [p.read_bytes() for p in copies] == contents
    assert marker in copies[1].read_bytes()
    wait_until(lambda: not any(p.exists() for p in sources), 20, "the source copies removed")
    wait_until(lambda: "on another node" in n1.log_path.read_text(), 20, "n1's domain removed")

    # Evacuate n2: it is cordoned, and web moves to another node.
    evacuated = n1.cli("node", "evacuate", "n2")
    assert evacuated.returncode == 0, evacuated.stderr
    assert "n2 is cordoned" in evacuated.stdout and "web: moved" in evacuated.stdout
    record = instance(n1, "web")
    assert record["node"] in ("n1", "n3") and record["status"] == "running"
    listed = n1.cli("node", "list")
    assert "(cordoned)" in listed.stdout
    small = ("--image", "boot", "--disk", "16M", "--memory", "64M", "--no-start")
    refused = n1.cli("instance", "create", "late", *small, "--node", "n2")
    assert refused.returncode == 1 and "node n2 is cordoned" in refused.stderr
    assert n1.cli("node", "restore", "n2").returncode == 0
    assert run_json(n1, "instance", "create", "late", *small, "--node", "n2")["node"] == "n2"

    # An offline node: its instances' volumes cannot be read, so they cannot move.
    run_json(n1, "instance", "create", "far", *small, "--node", "n3")
    n3.kill()
    wait_until(lambda: instance(n1, "far")["status"] == "unknown", 30, "far unknown")
    offline = n1.cli("node", "evacuate", "n3")
    assert offline.returncode == 1
    assert "far: instance far cannot move: its volumes are only on node n3" in offline.stdout
    assert instance(n1, "far")["node"] == "n3"
