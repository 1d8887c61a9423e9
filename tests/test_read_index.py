"""Consistent reads by read index (raft/readindex.py) on real 3-node clusters: no log
entry per read, on the leader and on followers; a read on one node sees a write just
acknowledged by another; with read index off on the leader (as a leader of an older
version) reads fall back to a barrier entry, which shows the count can fail; and a
leader whose followers fall silent says so (no quorum, "reaches 1 of 3") and refuses new
writes instead of hanging."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from symphonyd.errors import Indeterminate, NoQuorum, NotFound
from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = [pytest.mark.cluster]

READS = 40


def put(node: NodeProcess, key: str, value: bytes) -> None:
    node.client().request("PUT", f"/v1/kv/{key}", raw=value)


def consistent_get(node: NodeProcess, key: str) -> bytes:
    query = {"raw": "true", "consistent": "true"}
    return bytes(node.client(timeout=10).request("GET", f"/v1/kv/{key}", query=query))


def commit_index(node: NodeProcess) -> int:
    return int(node.status()["commit_index"])


@pytest.fixture(params=["read index", "control: read index off"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, NodeSet]]:
    settings = "" if request.param == "read index" else "[raft]\nreadIndex = false\n"
    nodes = NodeSet(tmp_path, settings)
    try:
        yield request.param, nodes
    finally:
        nodes.cleanup()


def test_consistent_reads_write_nothing_to_the_log(cluster: tuple[str, NodeSet]) -> None:
    mode, nodeset = cluster
    members = nodeset.form(3)
    leader = nodeset.leader()
    follower = next(n for n in members if n is not leader)
    put(leader, "read/me", b"v1")
    leader.settled_revision()
    before = commit_index(leader)
    confirmed = leader.status()["raft"]["reads_confirmed"]
    for i in range(READS):
        node = leader if i % 2 else follower
        assert consistent_get(node, "read/me") == b"v1"
    if mode == "read index":
        wait_until(  # the status is refreshed every ~50 ms
            lambda: leader.status()["raft"]["reads_confirmed"] - confirmed >= READS,
            5,
            f"the leader to count {READS} confirmed reads",
        )
        grown = commit_index(leader) - before
        assert grown < 5, f"{READS} consistent reads added {grown} log entries"
    else:  # each read was a barrier entry through the log
        wait_until(lambda: commit_index(leader) - before >= READS, 5, f"{READS} barrier entries")


def test_a_read_on_one_node_sees_a_write_acknowledged_by_another(nodeset: NodeSet) -> None:
    members = nodeset.form(3)
    for i in range(20):
        writer, reader = members[i % 3], members[(i + 1) % 3]
        put(writer, "seen/latest", f"value-{i}".encode())
        assert consistent_get(reader, "seen/latest") == f"value-{i}".encode(), (
            f"{reader.name} read an older value than {writer.name} acknowledged"
        )


def test_a_leader_whose_followers_fall_silent_refuses_instead_of_hanging(
    nodeset: NodeSet,
) -> None:
    members = nodeset.form(3)
    leader = nodeset.leader()
    paused = [n for n in members if n is not leader]
    try:
        for node in paused:  # their connections stay open and silent
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGSTOP)
        wait_until(lambda: not leader.status()["raft"]["has_quorum"], 15, "the leader to see it")
        status = leader.status()
        assert {m["health"] for m in status["members"] if m["name"] != leader.name} == {
            "unreachable"
        }, status["members"]
        with pytest.raises(NoQuorum) as caught:
            put(leader, "after/silence", b"x")
        assert "reaches 1 of 3 members" in caught.value.message
        with pytest.raises((NoQuorum, Indeterminate), match="cannot be confirmed"):
            consistent_get(leader, "after/silence")
    finally:
        for node in paused:
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGCONT)
    wait_until(lambda: nodeset.leader() is not None, 30, "a leader again")
    put(nodeset.leader(), "after/heal", b"ok")
    for node in members:
        assert consistent_get(node, "after/heal") == b"ok"
    for node in members:  # refused at once: it was never proposed
        with pytest.raises(NotFound):
            consistent_get(node, "after/silence")
