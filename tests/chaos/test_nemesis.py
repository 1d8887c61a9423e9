"""The nemesis suite, short: a 3-node cluster behind proxies under a workload of four
clients on three keys, while it suffers kill -9 of the leader and of a follower (both
restarted), a SIGSTOP pause of the leader, a partition of the leader that drops its
traffic and one of a follower that resets it. After healing: every key's history is
linearizable, no acknowledged write was lost, no refused write was ever seen, and every
member holds the same keys, values and indexes at the same revision. A negative control
feeds the checker the same real history with one stale read injected."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.checker import Op, check
from tests.chaos.run import ChaosReport, run_chaos

PLAN = [
    ("kill", "leader"),
    ("kill", "follower"),
    ("pause", "leader"),
    ("partition-drop", "leader"),
    ("partition-cut", "follower"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    base: Path = tmp_path_factory.mktemp("chaos")
    return run_chaos(base, nodes=3, duration=90, plan=PLAN, max_faults=len(PLAN), seed=15)


pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(400)]


def test_every_fault_was_injected_and_healed(report: ChaosReport) -> None:
    assert [(f.kind, f.role) for f in report.faults] == PLAN
    assert all(f.healed > f.start for f in report.faults)
    # the partitions were real: the proxies carried the nodes' own links
    between_nodes = [link for link in report.links if "client" not in link]
    assert len(between_nodes) >= 3, report.links


def test_the_workload_ran_through_the_faults(report: ChaosReport) -> None:
    outcomes = {r.op.outcome for r in report.records}
    assert "ok" in outcomes
    acknowledged = [r for r in report.records if r.op.outcome == "ok"]
    after_last_fault = [r for r in acknowledged if r.op.invoke > report.faults[-1].healed]
    assert after_last_fault, "nothing was acknowledged after the last fault healed"


def test_every_key_is_linearizable(report: ChaosReport) -> None:
    for key, verdict in report.verdicts.items():
        assert verdict.valid is True, f"{key}: {verdict.message}\n{report.summary()}"


def test_no_acknowledged_write_was_lost(report: ChaosReport) -> None:
    assert not any(report.lost.values()), report.problems()


def test_no_refused_write_was_seen(report: ChaosReport) -> None:
    assert report.failed_seen == [], report.problems()


def test_members_are_identical_at_the_same_revision(report: ChaosReport) -> None:
    assert report.divergent is None, report.divergent
    assert all(report.contents.values()), "the workload's keys are missing somewhere"


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
