"""One chaos run, for the CI test and for bench/chaos.py: form a cluster behind proxies,
run the workload while the nemesis injects faults, heal everything, then judge.

What it judges (`ChaosReport`): every key's history is linearizable (tests/chaos/checker.py);
no acknowledged write was lost (after the final value's write, no acknowledged change of
the key came later); no write answered `no_quorum` was ever seen; every member holds the
same keys, values and ModifyIndexes at the same revision. It also measures, after each
fault that hits the leader (alone or in a group), the time to the next acknowledged write.

Bounded: the faults stop at `duration`, the clients soon after (each request at most its
timeout), and every process is stopped by its PID at the end (ChaosCluster.cleanup), also
on failure.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from symphonyd.errors import NotFound
from tests.chaos.checker import Op, Verdict, check
from tests.chaos.nemesis import ChaosCluster, Fault, Nemesis
from tests.chaos.workload import KEY_PREFIX, MUTATIONS, Record, Workload
from tests.nodes import NodeProcess

HOLD = {"kill": 3.0, "pause": 6.0, "partition-drop": 6.0, "partition-cut": 5.0}
# recovery_times keys: "<kind> of the <role>"
GAP = 2.0  # between faults: the cluster recovers


@dataclass
class ChaosReport:
    nodes: int
    records: list[Record]
    faults: list[Fault]
    verdicts: dict[str, Verdict]
    lost: dict[str, list[Op]]
    failed_seen: list[Op]
    revision: int
    contents: dict[str, dict[str, Any]]
    recovery: dict[str, list[float]] = field(default_factory=dict)
    links: dict[str, int] = field(default_factory=dict)  # connections each proxy link carried
    # faults of a follower after which the leader's term had changed (a returning
    # follower deposing the leader: pre-vote should keep it at 0), and how many there were
    follower_elections: int = 0
    follower_faults: int = 0
    final: dict[str, str | None] = field(default_factory=dict)  # each key's last value read

    @property
    def divergent(self) -> str | None:
        """How the members' copies differ, or None."""
        first_name, first = next(iter(self.contents.items()))
        for name, contents in self.contents.items():
            if contents != first:
                return f"{name} holds {contents}, {first_name} holds {first}"
        return None

    def problems(self) -> list[str]:
        found = [v.message for k, v in self.verdicts.items() if v.valid is not True]
        found += [
            f"{key}: acknowledged and lost: {', '.join(o.describe() for o in ops)}"
            for key, ops in self.lost.items()
            if ops
        ]
        found += [f"refused (no_quorum) yet seen: {o.describe()}" for o in self.failed_seen]
        if self.divergent:
            found.append(f"members differ at revision {self.revision}: {self.divergent}")
        return found

    def summary(self) -> str:
        outcomes = Counter(r.op.outcome for r in self.records)
        kinds = Counter(f"{f.kind} of the {f.role}" for f in self.faults)
        lines = [
            f"{self.nodes} nodes, {len(self.records)} operations attempted: "
            f"{outcomes['ok']} acknowledged, {outcomes['fail']} failed (no_quorum), "
            f"{outcomes['unknown']} unknown",
            "faults: " + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"),
        ]
        for key, verdict in sorted(self.verdicts.items()):
            count = sum(1 for r in self.records if r.key == key)
            first_line = verdict.message.splitlines()[0]
            lines.append(f"key {key}: {count} ops, {first_line}")
        lost = sum(len(ops) for ops in self.lost.values())
        lines.append(f"acknowledged writes lost: {lost}")
        lines.append(
            f"elections after a fault of a follower: {self.follower_elections} of "
            f"{self.follower_faults}"
        )
        lines.append(f"refused writes seen later: {len(self.failed_seen)}")
        lines.append(
            f"members identical at revision {self.revision}: "
            + ("yes" if not self.divergent else f"NO ({self.divergent})")
        )
        for fault, seconds in sorted(self.recovery.items()):
            if seconds:
                lines.append(
                    f"next acknowledged write after {fault}: "
                    f"median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s "
                    f"({len(seconds)} faults)"
                )
        lines.append(
            "connections through the proxies: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.links.items()))
        )
        return "\n".join(lines)


def dump(node: NodeProcess) -> dict[str, Any]:
    """The node's own copy of the workload's keys (a local read, no barrier)."""
    try:
        entries = node.client(timeout=10).request(
            "GET", f"/v1/kv/{KEY_PREFIX}", query={"recurse": ""}
        )
    except NotFound:
        return {}
    return {e["Key"]: (e["Value"], e["ModifyIndex"]) for e in entries}


def lost_writes(history: list[Op], final: str | None) -> list[Op]:
    """Acknowledged changes that come, in real time, after the write of the final value:
    the final value should have been replaced, so they were lost. The most generous
    writer is taken (an unknown one completes never, so nothing is counted after it)."""
    if final is None:
        writers = [o for o in history if o.kind in ("delete", "cas_delete")]
    else:
        writers = [o for o in history if o.kind in ("write", "cas") and o.value == final]
    writers = [o for o in writers if o.outcome != "fail"]
    last = max((o.complete for o in writers), default=float("-inf") if final is None else None)
    if last is None:
        return []  # a value no write wrote: the checker reports it
    changed = [
        o
        for o in history
        if o.kind in MUTATIONS
        and o.outcome == "ok"
        and (o.kind in ("write", "delete") or o.result)
        and o.invoke > last
    ]
    return changed


def failed_seen(records: list[Record]) -> list[Op]:
    seen = {(r.key, r.op.value) for r in records if r.op.kind == "read" and r.op.outcome == "ok"}
    return [
        r.op
        for r in records
        if r.op.outcome == "fail" and r.op.kind in ("write", "cas") and (r.key, r.op.value) in seen
    ]


def recovery_times(faults: list[Fault], records: list[Record]) -> dict[str, list[float]]:
    """Per fault that hits the leader ("kill of the majority", ...): seconds from the fault
    to the completion of the first acknowledged change invoked after it."""
    acknowledged = [r.op for r in records if r.op.kind in MUTATIONS and r.op.outcome == "ok"]
    out: dict[str, list[float]] = {}
    for fault in faults:
        if fault.role == "follower":
            continue
        after = [o.complete for o in acknowledged if o.invoke >= fault.start]
        if after:
            out.setdefault(f"{fault.kind} of the {fault.role}", []).append(min(after) - fault.start)
    return out


def run_chaos(
    base: Path,
    *,
    nodes: int,
    duration: float,
    plan: list[tuple[str, str]],
    seed: int = 0,
    clients: int = 4,
    keys: int = 3,
    max_faults: int = 10_000,
    log: Any = None,
) -> ChaosReport:
    """Faults from `plan` (kind, role) in turn, cycling, until `duration` seconds or
    `max_faults` faults."""
    cluster = ChaosCluster(base)
    try:
        members = cluster.form(nodes)
        nemesis = Nemesis(cluster, members, seed)
        names = [f"k{i}" for i in range(keys)]
        workload = Workload(nemesis.reachable, names, clients=clients, seed=seed)
        workload.start(max_seconds=duration + 60)
        follower_faults = follower_elections = 0
        try:
            time.sleep(GAP)
            deadline = time.monotonic() + duration
            for step in range(max_faults):
                if time.monotonic() >= deadline:
                    break
                kind, role = plan[step % len(plan)]
                term = nemesis.leader().status()["term"] if role == "follower" else None
                fault = nemesis.inject(kind, role, HOLD[kind])
                if log:
                    log(
                        f"{kind} of the {role} {fault.node}: healed after "
                        f"{fault.healed - fault.start:.1f} s"
                    )
                time.sleep(GAP)
                if term is not None:
                    follower_faults += 1
                    follower_elections += nemesis.leader().status()["term"] != term
        finally:
            workload.stop()
            nemesis.heal_all()
        final = workload.final_reads(nemesis.leader())
        revision = nemesis.settle()
        contents = {n.name: dump(n) for n in members}
        records = list(workload.records)
        verdicts = {k: check(workload.history(k)) for k in names}
        lost = {k: lost_writes(workload.history(k), final[k]) for k in names}
        return ChaosReport(
            nodes,
            records,
            nemesis.faults,
            verdicts,
            lost,
            failed_seen(records),
            revision,
            contents,
            recovery_times(nemesis.faults, records),
            dict(cluster.proxies.stats.by_link),
            follower_elections,
            follower_faults,
            final,
        )
    finally:
        cluster.cleanup()
