"""Placement asked on a follower goes by the leader's view of the members (issue 12,
item 3): a follower cut off from the only node that can take an instance still creates it
there, since the leader reaches that node; and once the leader does not reach it, the
same request is refused at once, though the follower reaches it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from symphonyd.compute.testimage import write_image
from tests.chaos.nemesis import ChaosCluster
from tests.nodes import NodeProcess, run_json, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

SMALL = ("--image", "boot", "--disk", "16M", "--memory", "64M")


def connected(node: NodeProcess, other: NodeProcess) -> bool:
    peers = node.status()["raft"]["peers"]
    return bool(peers[f"127.0.0.1:{other.raft_port}"]["connected"])


def online_for(node: NodeProcess, other: NodeProcess) -> bool:
    members = {m["name"]: m for m in node.status()["members"]}
    return bool(members[other.name]["health"] == "online")


def test_a_follower_places_by_the_leaders_view(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path)
    try:
        members = cluster.form(3)
        leader = cluster.leader()
        asker, target = (n for n in members if n is not leader)
        run_json(target, "service", "new")
        run_json(target, "service", "new", "compute", "-o", "test_cpus=2")
        assert leader.cli("config", "set", "images.min_replicas", "1").returncode == 0
        disk = tmp_path / "boot.raw"
        write_image(str(disk))
        run_json(leader, "image", "new", "boot sector", "boot", str(disk))

        # The asker's own link to the target is cut: by its own view nothing can take it.
        cluster.proxies.set_link(asker.name, target.name, "cut")
        wait_until(lambda: not connected(asker, target), 30, "the asker to lose its link")
        # (--no-wait: the asker shows an instance on a node it does not reach as `unknown`)
        made = run_json(asker, "instance", "create", "vm1", *SMALL, "--no-wait")
        assert made["node"] in (None, target.name)

        def on_leader() -> Any:
            return leader.client().request("GET", "/v1/instances/vm1")

        wait_until(lambda: on_leader()["status"] == "running", 90, "vm1 running")
        assert on_leader()["node"] == target.name

        # Now the leader does not reach the target, the asker does: refused at once.
        cluster.proxies.heal()
        cluster.proxies.set_link(leader.name, target.name, "cut")
        wait_until(lambda: connected(asker, target), 30, "the asker's link back")
        wait_until(lambda: not online_for(leader, target), 30, "the leader to lose the target")
        refused = asker.cli("instance", "create", "vm2", *SMALL, timeout=120)
        assert refused.returncode == 1, refused.stdout
        assert f"node {target.name} is unreachable" in refused.stderr, refused.stderr
        names = [i["name"] for i in run_json(asker, "instance", "list")["instances"]]
        assert names == ["vm1"]  # nothing recorded for the refused one
    finally:
        cluster.cleanup()
