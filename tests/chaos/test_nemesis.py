"""The nemesis suite, short: a cluster behind proxies under a workload of four clients on
three keys. 3 nodes suffer kill -9 of the leader, of a follower, of a majority (the
cluster stops) and of all of them (a whole-cluster crash), each then restarted, a SIGSTOP
pause of the leader, a partition of the leader that drops its traffic and one of a
follower that resets it; 5 nodes suffer majority/minority splits (the leader and one
follower against three, dropped and reset) and kill -9 of a majority. After healing:
every key's history is linearizable, no acknowledged write was lost, no refused write was
ever seen, and every member holds the same keys, values and indexes at the same revision.
A negative control feeds the checker the same real history with one stale read injected."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.checker import Op, check
from tests.chaos.run import HOLD, ChaosReport, run_chaos
from tests.chaos.workload import KEY_PREFIX, MUTATIONS

PLANS = {
    3: [
        ("kill", "leader"),
        ("kill", "follower"),
        ("pause", "leader"),
        ("partition-drop", "leader"),
        ("partition-cut", "follower"),
        ("kill", "majority"),
        ("kill", "all"),
    ],
    5: [
        ("partition-drop", "minority"),
        ("kill", "majority"),
        ("partition-cut", "minority"),
    ],
}


@pytest.fixture(scope="module", params=sorted(PLANS), ids=lambda n: f"{n}-nodes")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    nodes: int = request.param
    base: Path = tmp_path_factory.mktemp(f"chaos{nodes}")
    plan = PLANS[nodes]
    return run_chaos(base, nodes=nodes, duration=120, plan=plan, max_faults=len(plan), seed=15)


pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


def test_every_fault_was_injected_and_healed(report: ChaosReport) -> None:
    assert [(f.kind, f.role) for f in report.faults] == PLANS[report.nodes]
    assert all(f.healed > f.start for f in report.faults)
    sizes = {"leader": 1, "follower": 1, "majority": report.nodes // 2 + 1}
    sizes |= {"minority": (report.nodes - 1) // 2, "all": report.nodes}
    for fault in report.faults:
        assert len(fault.node.split("+")) == sizes[fault.role], fault
    # the partitions were real: the proxies carried the nodes' own links
    between_nodes = [link for link in report.links if "client" not in link]
    assert len(between_nodes) >= 3, report.links


def test_the_workload_ran_through_the_faults(report: ChaosReport) -> None:
    outcomes = {r.op.outcome for r in report.records}
    assert "ok" in outcomes
    acknowledged = [r for r in report.records if r.op.outcome == "ok"]
    after_last_fault = [r for r in acknowledged if r.op.invoke > report.faults[-1].healed]
    assert after_last_fault, "nothing was acknowledged after the last fault healed"


def test_nothing_was_acknowledged_while_a_majority_was_down(report: ChaosReport) -> None:
    """The kills of a majority were real: no change invoked after them was acknowledged
    before the restarts began (HOLD seconds later), and the survivors were asked."""
    for fault in report.faults:
        if fault.kind != "kill" or fault.role not in ("majority", "all"):
            continue
        window = (fault.start + 0.1, fault.start + HOLD["kill"])
        during = [r.op for r in report.records if window[0] < r.op.invoke < window[1]]
        changes = [o for o in during if o.kind in MUTATIONS and o.outcome == "ok"]
        acknowledged = [o for o in changes if o.complete < window[1]]
        assert acknowledged == [], f"{fault}: {[o.describe() for o in acknowledged]}"
        if fault.role == "majority":
            assert any(o.outcome != "ok" for o in during), f"{fault}: nothing tried the survivors"


def test_every_key_is_linearizable(report: ChaosReport) -> None:
    for key, verdict in report.verdicts.items():
        assert verdict.valid is True, f"{key}: {verdict.message}\n{report.summary()}"


def test_no_acknowledged_write_was_lost(report: ChaosReport) -> None:
    assert not any(report.lost.values()), report.problems()


def test_no_refused_write_was_seen(report: ChaosReport) -> None:
    assert report.failed_seen == [], report.problems()


def test_members_are_identical_at_the_same_revision(report: ChaosReport) -> None:
    assert report.divergent is None, report.divergent
    # each copy holds exactly the keys the final reads found (all may have been deleted)
    present = {f"{KEY_PREFIX}{k}" for k, v in report.final.items() if v is not None}
    assert report.final and all(set(c) == present for c in report.contents.values()), (
        report.final,
        report.contents,
    )


def test_negative_control_a_stale_read_injected_in_the_real_history_fails() -> None:
    """The checker, fed a real history's shape with one read that returns the value
    before the last acknowledged write, says no (and names that read)."""
    writes = [
        Op("write", 0.0, 1.0, value="c0-1", id=1),
        Op("read", 1.5, 2.0, value="c0-1", id=2),
        Op("write", 3.0, 4.0, value="c1-1", process=1, id=3),
    ]
    assert check(writes).valid is True
    stale = Op("read", 4.5, 5.0, value="c0-1", process=2, id=4)
    verdict = check([*writes, stale])
    assert verdict.valid is False and verdict.failing == stale


def test_negative_control_on_the_run_history(report: ChaosReport) -> None:
    key = next(iter(report.verdicts))
    history = [r.op for r in report.records if r.key == key]
    ok_writes = sorted(
        (o for o in history if o.kind == "write" and o.outcome == "ok"), key=lambda o: o.invoke
    )
    pair = next((a, b) for a, b in itertools.pairwise(ok_writes) if b.invoke > a.complete)
    older, newer = pair
    stale = replace(
        older, kind="read", invoke=newer.complete + 1e-4, complete=newer.complete + 2e-4, id=10**9
    )
    verdict = check([*history, stale])
    assert verdict.valid is False
    assert verdict.failing is not None and verdict.failing.id == 10**9, verdict.message
