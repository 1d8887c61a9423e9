"""`symphonyd recover`: a 3-node cluster loses two nodes for good (killed, data dirs
deleted); the survivor, stopped, is made the only member from its own data; it serves
everything it had, takes writes, and two new nodes join it and get the same data.
Also: it refuses while the daemon runs, without --yes and no terminal, and on a data dir
that belongs to no cluster; and an uncommitted tail of the survivor's log is kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = pytest.mark.cluster


def kv_get(node: NodeProcess, key: str) -> str:
    result = node.cli("kv", "get", key)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


COMPACT_OFTEN = "[raft]\nlogCompactionMinEntries = 40\nlogCompactionMinTime = 1\n"


@pytest.fixture(params=["journal only", "snapshot and journal"])
def survivors(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeSet]:
    """Nodes whose state is all in the journal, or mostly in a snapshot (compacted
    every 40 entries) with the rest in the journal."""
    nodes = NodeSet(tmp_path, COMPACT_OFTEN if request.param == "snapshot and journal" else "")
    try:
        yield nodes
    finally:
        nodes.cleanup()


def test_a_survivor_recovers_the_cluster_and_new_nodes_join(survivors: NodeSet) -> None:
    nodeset = survivors
    n1, n2, n3 = nodeset.form(3)
    for i in range(60):
        assert n1.cli("kv", "put", f"app/k{i}", f"v{i}").returncode == 0
    compacted = (n1.data_dir / "raft" / "snapshot").exists()
    assert compacted == bool(nodeset.settings)
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    wait_until(lambda: n2.status()["commit_index"] >= n1.status()["commit_index"], 20, "n2")

    # Two nodes gone for good: killed, their disks wiped.
    for lost in (n2, n3):
        lost.kill()
        shutil.rmtree(lost.data_dir)
    refused = n1.cli("recover", "--yes")
    assert refused.returncode == 1
    assert "symphonyd is running with data dir" in refused.stderr and "stop it" in refused.stderr
    n1.stop()

    unconfirmed = n1.cli("recover")  # no terminal, no --yes: nothing changes
    assert unconfirmed.returncode == 1 and "confirm with --yes" in unconfirmed.stderr
    assert not list(n1.data_dir.glob("raft.before-recover-*"))
    assert "Raft members now: " in unconfirmed.stdout and "WARNING" in unconfirmed.stdout

    result = n1.cli("recover", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["recovered"] is True and facts["node"] == "n1"
    assert sorted(facts["removed_nodes"]) == ["n2", "n3"]
    assert len(facts["members_before"]) == 3
    assert facts["kv_keys"] == 60
    assert Path(facts["backup"]).is_dir()
    identity = json.loads((n1.data_dir / "identity.json").read_text())
    assert identity["peers"] == [n1.raft_addr]

    n1.start()
    wait_until(lambda: n1.status()["has_quorum"], 20, "n1 to lead alone")
    status = n1.status()
    assert [m["name"] for m in status["members"]] == ["n1"]
    assert status["role"] == "leader"
    assert all(kv_get(n1, f"app/k{i}") == f"v{i}" for i in range(0, 60, 7))
    assert kv_get(n1, "app/k59") == "v59"
    assert n1.cli("kv", "put", "after/recover", "yes").returncode == 0
    assert n1.cli("config", "get", "images.min_replicas").stdout.split() == [
        "images.min_replicas",
        "1",
    ]

    # Two new nodes join the recovered cluster and hold the same data.
    n4, n5 = nodeset.new("n4"), nodeset.new("n5")
    for node in (n4, n5):
        nodeset.join(node, via=n1)
    for node in (n1, n4, n5):
        wait_until(
            lambda n=node: len(n.status()["members"]) == 3 and n.status()["has_quorum"],
            30,
            f"{node.name} to see 3 members",
        )
    assert kv_get(n5, "app/k7") == "v7" and kv_get(n4, "after/recover") == "yes"
    # ... and the cluster survives losing the old survivor: its data lives on n4 and n5.
    n1.kill()
    leader = nodeset.leader(among=[n4, n5])
    assert leader.cli("kv", "put", "after/n1-lost", "ok").returncode == 0
    assert kv_get(n4, "app/k59") == "v59"


def test_recover_refuses_a_data_dir_of_no_cluster(nodeset: NodeSet) -> None:
    lone = nodeset.new("lone")
    lone.stop()
    result = lone.cli("recover", "--yes")
    assert result.returncode == 1
    assert "holds no cluster member (no identity.json): nothing to recover" in result.stderr


def test_recover_keeps_the_uncommitted_tail_of_the_survivors_log(nodeset: NodeSet) -> None:
    """A write the survivor took as leader while both followers were gone is in its log
    but never committed: recovery commits it (the survivor is the cluster now)."""
    n1, n2, n3 = nodeset.form(3)
    leader = nodeset.leader()
    followers = [n for n in (n1, n2, n3) if n is not leader]
    for node in followers:  # paused: their connections stay open, so the write is sent
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        put = leader.cli("kv", "put", "late/write", "kept", timeout=60)
    finally:
        for node in followers:  # then gone for good (SIGKILL ends a stopped process too)
            node.kill()
            shutil.rmtree(node.data_dir)
    assert put.returncode == 1  # proposed, never committed: its fate was unknown
    assert "the write was sent: it applies if quorum returns" in put.stderr, put.stderr
    leader.stop()
    result = leader.cli("recover", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["uncommitted_entries_kept"] >= 1
    leader.start()
    wait_until(lambda: leader.status()["has_quorum"], 20, "the survivor to lead alone")
    assert kv_get(leader, "late/write") == "kept"
