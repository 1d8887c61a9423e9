"""A linearizability checker for one KV key: the register `/v1/kv/KEY` offers.

What it is for: deciding whether the operations a workload recorded on one key (each with
its invoke and complete time and its outcome) can be put in one sequential order that
respects real time and the register's rules. It does no I/O and knows nothing of
symphonyd's processes: plain `Op` values in, a `Verdict` out.

The model. The KV API's check-and-set compares ModifyIndex, the store revision of the
key's last change, which a client learns only by reading the key (a PUT answers `true` or
`false`, never the new index). The register's state here is the key's value (None when
absent), not (value, index): the workload writes a value never written before, so a value
names exactly one write, and "ModifyIndex is the one read together with value v" is the
same test as "the value is v". `cas` is `PUT ?cas=INDEX` with the index read together with
`expected` (`cas=0`, only if absent, for expected None); `cas_delete` is `DELETE
?cas=INDEX` (true and no change when the key is absent, as in Consul). The one case where
the two models differ is a write applied twice (same value, a new index): the value model
then sees a CAS answered false while the value matched, and reports the history as not
linearizable, which is what such a double apply is.

Outcomes: `ok` (answered; a CAS with its true/false), `fail` (definitely not applied,
`no_quorum`: left out, so a later read of its value has no write to explain it) and
`unknown` (timeout, lost connection, `indeterminate`: it may take effect at any time after
its invoke, or never; its complete time is infinite and its answer unconstrained; an
unknown read is left out, as it constrains nothing).

The search is Wing & Gong's, with Lowe's just-in-time linearization and a memo of the
configurations seen (the set of operations linearized, as a bitmask, and the register
state), as Knossos and Porcupine do: an operation may be linearized next only if no other
pending operation completed before it was invoked; a configuration met again is not
searched again. The search succeeds once every `ok` operation is linearized (pending
unknown ones are those that never took effect). On failure, a binary search over prefixes
(cut at each ok operation's completion; what is still running there becomes unknown)
finds the smallest prefix that cannot be linearized; its last operation is the one no
order can explain, reported with the operations around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

KINDS = ("read", "write", "delete", "cas", "cas_delete")
OUTCOMES = ("ok", "fail", "unknown")
DEFAULT_MAX_STATES = 2_000_000


@dataclass(frozen=True)
class Op:
    """One operation on the key. `value`: what a read returned, or what a write/cas
    writes. `expected`: the value a cas/cas_delete compares with. `result`: a cas's or
    cas_delete's answer when ok. `complete` is `math.inf` for an unknown outcome."""

    kind: str
    invoke: float
    complete: float
    outcome: str = "ok"
    value: str | None = None
    expected: str | None = None
    result: bool | None = None
    process: int = 0
    id: int = -1

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.outcome not in OUTCOMES:
            raise ValueError(f"bad op {self.kind}/{self.outcome}")
        if self.outcome == "ok" and self.kind in ("cas", "cas_delete") and self.result is None:
            raise ValueError("an ok cas needs its result")

    def describe(self) -> str:
        if self.kind == "read":
            what = f"read -> {self.value!r}"
        elif self.kind == "write":
            what = f"write {self.value!r}"
        elif self.kind == "delete":
            what = "delete"
        elif self.kind == "cas":
            what = f"cas {self.expected!r} -> {self.value!r}"
        else:
            what = f"cas_delete {self.expected!r}"
        if self.kind in ("cas", "cas_delete") and self.outcome == "ok":
            what += f" = {self.result}"
        end = "inf" if math.isinf(self.complete) else f"{self.complete:.3f}"
        return f"#{self.id} p{self.process} {what} [{self.outcome}] {self.invoke:.3f}..{end}"


def step(state: str | None, op: Op) -> tuple[bool, str | None]:
    """The register: can `op` take effect now, with the answer it got, and what after.
    For an unknown cas only the branch that changes something matters: taking effect
    without a change is the same as never taking effect."""
    if op.kind == "read":
        return state == op.value, state
    if op.kind == "write":
        return True, op.value
    if op.kind == "delete":
        return True, None
    if op.kind == "cas":
        matches = state == op.expected
        if op.outcome == "unknown" or op.result:
            return matches, op.value if matches else state
        return not matches, state
    # cas_delete: a missing key is deleted "successfully" without a change
    applies = state is None or state == op.expected
    if op.outcome == "unknown" or op.result:
        return applies, None if applies else state
    return not applies, state


@dataclass
class Verdict:
    """`valid` is None when the search gave up after `max_states` configurations."""

    valid: bool | None
    message: str = ""
    states: int = 0
    failing: Op | None = None
    involved: list[Op] = field(default_factory=list)
    prefix: int = 0  # ops in the smallest prefix that cannot be linearized

    def __bool__(self) -> bool:
        return self.valid is True


def _prepared(ops: Iterable[Op]) -> list[Op]:
    """Drop what cannot matter (failed ops, unknown reads); number and sort by invoke."""
    kept = []
    for index, op in enumerate(ops):
        if op.id < 0:
            op = replace(op, id=index)
        if op.outcome == "unknown":
            op = replace(op, complete=math.inf)
        if op.outcome == "fail" or (op.outcome == "unknown" and op.kind == "read"):
            continue
        kept.append(op)
    kept.sort(key=lambda o: (o.invoke, o.complete))
    return kept


def _search(ops: Sequence[Op], initial: str | None, max_states: int) -> tuple[bool | None, int]:
    """Wing & Gong with just-in-time candidates and a memo; (linearizable?, states)."""
    count = len(ops)
    invoke = [o.invoke for o in ops]
    complete = [o.complete for o in ops]
    must = 0
    for i, o in enumerate(ops):
        if o.outcome == "ok":
            must |= 1 << i
    everything = (1 << count) - 1

    def candidates(mask: int) -> list[int]:
        # Pending ops in invoke order; one invoked after the earliest pending completion
        # must wait for it, and so must every later one (sorted by invoke).
        pending = everything & ~mask
        horizon = math.inf
        seen: list[int] = []
        while pending:
            low = pending & -pending
            i = low.bit_length() - 1
            if invoke[i] > horizon:
                break
            seen.append(i)
            horizon = min(horizon, complete[i])
            pending ^= low
        return [i for i in seen if invoke[i] <= horizon]

    if must == 0:
        return True, 0
    memo: set[tuple[int, str | None]] = {(0, initial)}
    stack: list[tuple[int, str | None, list[int]]] = [(0, initial, candidates(0))]
    while stack:
        mask, state, todo = stack[-1]
        if not todo:
            stack.pop()
            continue
        i = todo.pop()
        allowed, after = step(state, ops[i])
        if not allowed:
            continue
        grown = mask | (1 << i)
        if (grown, after) in memo:
            continue
        if grown & must == must:
            return True, len(memo)
        memo.add((grown, after))
        if len(memo) >= max_states:
            return None, len(memo)
        stack.append((grown, after, candidates(grown)))
    return False, len(memo)


def _prefix(ops: Sequence[Op], cut: float) -> list[Op]:
    """What had happened by time `cut`: ops invoked by then; those not complete by then
    become unknown (they may or may not have taken effect yet)."""
    out = []
    for op in ops:
        if op.invoke > cut:
            continue
        if op.complete > cut and op.outcome == "ok":
            if op.kind == "read":
                continue
            op = replace(op, outcome="unknown", complete=math.inf, result=None)
        out.append(op)
    return out


def check(
    history: Iterable[Op], initial: str | None = None, max_states: int = DEFAULT_MAX_STATES
) -> Verdict:
    """Is the history of one key linearizable against the register, starting at `initial`?"""
    ops = _prepared(history)
    valid, states = _search(ops, initial, max_states)
    if valid is None:
        return Verdict(None, f"undecided after {states} configurations", states)
    if valid:
        return Verdict(True, f"linearizable ({len(ops)} ops, {states} configurations)", states)
    # The smallest failing prefix, cut at ok completions (failing is monotone in the cut).
    cuts = sorted({o.complete for o in ops if o.outcome == "ok"})
    low, high = 0, len(cuts) - 1  # cuts[high] fails (it is the whole history)
    while low < high:
        middle = (low + high) // 2
        verdict, more = _search(_prefix(ops, cuts[middle]), initial, max_states)
        states += more
        if verdict is False:
            high = middle
        else:
            low = middle + 1
    cut = cuts[high]
    prefix = _prefix(ops, cut)
    failing = next(o for o in ops if o.outcome == "ok" and o.complete == cut)
    earlier = sorted((o for o in prefix if o.complete < failing.invoke), key=lambda o: o.complete)
    concurrent = [o for o in prefix if o.complete >= failing.invoke and o.id != failing.id]
    involved = [*earlier[-6:], *concurrent]
    lines = [
        f"not linearizable: no order explains {failing.describe()}",
        f"(smallest failing prefix: {len(prefix)} of {len(ops)} ops); before and around it:",
        *(f"  {o.describe()}" for o in involved),
    ]
    return Verdict(False, "\n".join(lines), states, failing, involved, len(prefix))
