"""Membership changes under faults, on a cluster behind proxies under the chaos workload:
a node joins while a follower's traffic is silently dropped; a follower leaves while
the leader is killed (-9) half-way; a member killed for good is removed. After healing:
every key's history is linearizable, no acknowledged write was lost, no refused write
was seen, and every member holds the same keys and the same member list, which has
exactly the nodes whose join or removal went through."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from symphonyd.errors import SymphonyError
from tests.chaos.checker import check
from tests.chaos.nemesis import ChaosCluster, Nemesis
from tests.chaos.run import dump, failed_seen, lost_writes
from tests.chaos.workload import Workload
from tests.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(400)]

KEYS = ["k0", "k1", "k2"]


def member_names(node: NodeProcess) -> list[str]:
    return sorted(m["name"] for m in node.status()["members"])


def all_agree(members: list[NodeProcess], names: list[str], timeout: float = 30.0) -> None:
    wait_until(
        lambda: all(member_names(n) == names for n in members),
        timeout,
        f"every member to list {names}",
    )


def test_joins_leaves_and_removals_under_faults(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path)
    try:
        members = cluster.form(3)
        nemesis = Nemesis(cluster, members, seed=21)
        workload = Workload(nemesis.reachable, KEYS, clients=3, seed=21)
        workload.start(max_seconds=200)
        left: dict[str, Any] = {}
        try:
            time.sleep(2)
            # 1. a join while a follower is cut off (its traffic dropped, silently)
            leader = nemesis.leader()
            silent = next(n for n in members if n is not leader)
            for other in members:
                if other is not silent:
                    cluster.proxies.set_link(silent.name, other.name, "drop")
            newcomer = cluster.new("n4")
            cluster.join(newcomer, via=leader)
            with nemesis._lock:
                members.append(newcomer)  # the workload may use it from now on
            time.sleep(1)
            cluster.proxies.heal()
            all_agree(members, ["n1", "n2", "n3", "n4"])

            # 2. a follower leaves while the leader is killed half-way
            leader = nemesis.leader()
            leaver = next(n for n in members if n is not leader and n is not newcomer)

            def leave() -> None:
                try:
                    left["answer"] = leaver.client(timeout=60).request(
                        "POST", "/v1/cluster/leave", body={}
                    )
                except SymphonyError as exc:
                    left["error"] = exc
                else:
                    with nemesis._lock:
                        members.remove(leaver)  # out of the workload at once

            thread = threading.Thread(target=leave, name="leave")
            thread.start()
            time.sleep(0.1)
            nemesis.inject("kill", "leader", hold=3.0)  # the current leader: killed, restarted
            thread.join(timeout=90)
            assert not thread.is_alive(), "the leave did not answer"
            remaining = sorted(n.name for n in members)
            all_agree(members, remaining)
            if "answer" not in left:
                assert leaver.name in remaining, left

            # 3. a member killed for good is removed while the workload goes on
            leader = nemesis.leader()
            gone = next(n for n in members if n is not leader)
            with nemesis._lock:
                nemesis.down.add(gone.name)
                members.remove(gone)
            gone.kill()
            wait_until(
                lambda: (
                    not leader.status()["raft"]["peers"]
                    .get(f"127.0.0.1:{gone.raft_port}", {})
                    .get("connected", False)
                ),
                20,
                f"the leader to see {gone.name} gone",
            )
            leader.client(timeout=60).request("DELETE", f"/v1/nodes/{gone.name}")
            all_agree(members, sorted(n.name for n in members))
        finally:
            workload.stop()
            nemesis.heal_all()

        final = workload.final_reads(nemesis.leader())
        revision = nemesis.settle()
        records = list(workload.records)
        for key in KEYS:
            history = workload.history(key)
            verdict = check(history)
            assert verdict.valid is True, f"{key}: {verdict.message}"
            assert lost_writes(history, final[key]) == [], f"{key}: acknowledged writes lost"
        assert failed_seen(records) == []
        contents = {n.name: dump(n) for n in members}
        first = contents[members[0].name]
        assert first and all(c == first for c in contents.values()), (revision, contents)
        names = sorted(n.name for n in members)
        assert all(member_names(n) == names for n in members)
        outcomes = {r.op.outcome for r in records}
        print(
            f"\nmembership under faults: {len(records)} operations ({outcomes}); leave "
            f"{'done' if 'answer' in left else 'refused: ' + str(left.get('error'))}; "
            f"members {names} at revision {revision}"
        )
    finally:
        cluster.cleanup()
