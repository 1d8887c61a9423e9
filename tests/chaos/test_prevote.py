"""Pre-vote (raft/prevote.py): a follower cut off by a partition that drops packets (its
connections stay open and silent) keeps asking for pre-votes, which the members that hear
from the leader refuse, so its term does not grow; when the partition heals it follows the
same leader at the same term. The control, with pre-vote off ([raft] preVote = false),
shows the partition is one that deposes the leader without it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.nemesis import ChaosCluster
from tests.nodes import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PARTITION = 6.0  # s: several election timeouts (0.4-1.4 s)


@pytest.fixture(params=["pre-vote", "control: pysyncobj alone"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChaosCluster]:
    settings = "" if request.param == "pre-vote" else "[raft]\npreVote = false\n"
    nodes = ChaosCluster(tmp_path, settings)
    try:
        yield nodes
    finally:
        nodes.cleanup()


def test_a_follower_back_from_a_silent_partition_does_not_depose_the_leader(
    cluster: ChaosCluster,
) -> None:
    members = cluster.form(3)
    leader = cluster.leader()
    term = leader.status()["term"]
    cut_off = next(n for n in members if n is not leader)
    for other in members:
        if other is not cut_off:
            cluster.proxies.set_link(cut_off.name, other.name, "drop")
    try:
        ends = time.monotonic() + PARTITION
        writes = 0
        while time.monotonic() < ends and writes < 200:  # the majority goes on meanwhile
            leader.client(timeout=5).request("PUT", f"/v1/kv/during/{writes}", raw=b"x")
            writes += 1
            time.sleep(0.02)
        assert writes > 10
        tried = cut_off.status()["raft"]["prevote_rounds"]
        term_while_cut_off = cut_off.status()["term"]
    finally:
        cluster.proxies.heal()
    wait_until(
        lambda: cut_off.status()["revision"] == leader.status()["revision"],
        30,
        "the cut-off follower to catch up",
    )
    after = cluster.leader()
    terms = {n.status()["term"] for n in members}
    if cluster.settings:  # the control: without pre-vote the cut-off node forced elections
        assert terms != {term} or after is not leader, (term, terms)
        return
    assert tried >= 3, tried  # it kept asking while cut off (no answer came) ...
    assert term_while_cut_off == term  # ... and never stood for election
    assert after is leader and terms == {term}, (term, terms, after.name, leader.name)
    got = cut_off.cli("kv", "get", f"during/{writes - 1}")
    assert got.returncode == 0 and got.stdout.strip() == "x", got.stderr
