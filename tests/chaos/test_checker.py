"""The linearizability checker on hand-made histories, and against a brute force on many
small random ones (seeded, bounded). No cluster: these run in milliseconds."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from tests.chaos.checker import Op, check

INF = math.inf


def w(value: str, start: float, end: float, outcome: str = "ok", p: int = 0) -> Op:
    return Op("write", start, end, outcome, value=value, process=p)


def r(value: str | None, start: float, end: float, p: int = 0) -> Op:
    return Op("read", start, end, "ok", value=value, process=p)


def cas(expected: str | None, new: str, ok: bool | None, start: float, end: float) -> Op:
    outcome = "unknown" if ok is None else "ok"
    return Op("cas", start, end, outcome, value=new, expected=expected, result=ok)


def test_sequential_history_is_linearizable() -> None:
    history = [r(None, 0, 1), w("a", 2, 3), r("a", 4, 5), cas("a", "b", True, 6, 7), r("b", 8, 9)]
    assert check(history).valid is True


def test_concurrent_reads_may_see_either_side_of_a_write() -> None:
    history = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4, p=1), r("b", 5, 6, p=2)]
    assert check(history).valid is True


def test_stale_read_is_not_linearizable() -> None:
    history = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5, p=1)]
    verdict = check(history)
    assert verdict.valid is False
    assert verdict.failing is not None and verdict.failing.kind == "read"
    assert "read -> 'a'" in verdict.message


def test_read_going_back_after_a_newer_one_is_not_linearizable() -> None:
    history = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4, p=1), r("a", 5, 6, p=2)]
    assert check(history).valid is False


def test_lost_write_is_not_linearizable() -> None:
    # an acknowledged write, then a read (after it) that sees the value before it
    history = [w("a", 0, 1), w("b", 2, 3, p=1), r("a", 10, 11, p=2), r("a", 12, 13)]
    assert check(history).valid is False


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    assert check([w("a", 0, 1), r("z", 2, 3)]).valid is False
    assert check([r("a", 0, 1)]).valid is False


def test_unknown_write_may_be_seen_later_or_never() -> None:
    seen = [w("a", 0, 1), w("b", 2, INF, "unknown"), r("a", 3, 4), r("b", 50, 51)]
    assert check(seen).valid is True
    never = [w("a", 0, 1), w("b", 2, INF, "unknown"), r("a", 50, 51)]
    assert check(never).valid is True
    # but once seen, it cannot be undone
    flip = [w("a", 0, 1), w("b", 2, INF, "unknown"), r("b", 3, 4), r("a", 5, 6)]
    assert check(flip).valid is False


def test_failed_write_seen_later_is_not_linearizable() -> None:
    history = [w("a", 0, 1), w("b", 2, 3, "fail"), r("b", 4, 5)]
    verdict = check(history)
    assert verdict.valid is False
    assert "read -> 'b'" in verdict.message


def test_cas_answers() -> None:
    assert check([w("a", 0, 1), cas("a", "b", True, 2, 3), r("b", 4, 5)]).valid is True
    assert check([w("a", 0, 1), cas("x", "b", False, 2, 3), r("a", 4, 5)]).valid is True
    # a cas answered false while the value was the expected one
    assert check([w("a", 0, 1), cas("a", "b", False, 2, 3)]).valid is False
    # a cas answered true while the value was another
    assert check([w("a", 0, 1), cas("x", "b", True, 2, 3)]).valid is False
    # cas=0 (expected absent)
    assert check([cas(None, "a", True, 0, 1), r("a", 2, 3)]).valid is True
    # an unknown cas takes effect only where its expectation holds
    unknown = [w("a", 0, 1), cas("x", "b", None, 2, INF), r("b", 5, 6)]
    assert check(unknown).valid is False


def test_delete_and_cas_delete() -> None:
    delete = Op("delete", 2, 3)
    assert check([w("a", 0, 1), delete, r(None, 4, 5)]).valid is True
    assert check([w("a", 0, 1), delete, r("a", 4, 5)]).valid is False
    gone = Op("cas_delete", 2, 3, expected="a", result=True)
    assert check([w("a", 0, 1), gone, r(None, 4, 5)]).valid is True
    refused = Op("cas_delete", 2, 3, expected="x", result=False)
    assert check([w("a", 0, 1), refused, r("a", 4, 5)]).valid is True
    # a cas_delete of a missing key answers true and changes nothing
    missing = Op("cas_delete", 0, 1, expected="x", result=True)
    assert check([missing, r(None, 2, 3)]).valid is True


def test_failure_names_the_smallest_failing_prefix() -> None:
    history = [
        w("a", 0, 1),
        w("b", 2, 3),
        r("a", 4, 5),
        *(r("a", 6 + i, 6.5 + i) for i in range(9)),
    ]
    verdict = check(history)
    assert verdict.valid is False and verdict.prefix == 3
    assert verdict.failing is not None and verdict.failing.invoke == 4


def test_long_concurrent_history_is_fast_enough_to_decide() -> None:
    """Several hundred ops, four clients overlapping: decided (not given up)."""
    rng = random.Random(7)
    history, ops = simulate(rng, processes=4, per_process=120, unknown=0.02, fail=0.02)
    verdict = check(history)
    assert verdict.valid is True, verdict.message
    assert ops == 480


# -- a brute force to compare with ---------------------------------------------------------


def brute_force(history: list[Op]) -> bool:
    """Every subset of the unknown ops, every order of it and the ok ops that respects
    real time, run through its own copy of the register's rules."""
    ok = [o for o in history if o.outcome == "ok"]
    unknown = [o for o in history if o.outcome == "unknown" and o.kind != "read"]
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            ops = ok + list(chosen)
            for order in itertools.permutations(ops):
                if respects_real_time(order) and legal(order):
                    return True
    return False


def respects_real_time(order: tuple[Op, ...]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1 :]:
            if earlier.outcome == "ok" and earlier.complete < later.invoke:
                return False  # `earlier` finished before `later` began, yet comes after
    return True


def legal(order: tuple[Op, ...]) -> bool:
    value: str | None = None
    for op in order:
        if op.kind == "read":
            if op.value != value:
                return False
        elif op.kind == "write":
            value = op.value
        elif op.kind == "delete":
            value = None
        elif op.kind == "cas":
            took = value == op.expected
            if op.outcome == "ok" and op.result != took:
                return False
            if op.outcome == "unknown" and not took:
                return False
            if took:
                value = op.value
        else:
            took = value is None or value == op.expected
            if op.outcome == "ok" and op.result != took:
                return False
            if op.outcome == "unknown" and not took:
                return False
            value = None if took else value
    return True


def simulate(
    rng: random.Random, processes: int, per_process: int, unknown: float, fail: float
) -> tuple[list[Op], int]:
    """A linearizable history by construction: each op takes effect at a random instant
    inside its interval on a real register (an unknown op at some instant after its
    invoke, or never; a failed one never)."""
    planned = []
    counter = itertools.count()
    for p in range(processes):
        clock = rng.uniform(0, 1)
        for _ in range(per_process):
            start = clock + rng.uniform(0, 0.5)
            end = start + rng.uniform(0.05, 2.0)
            clock = end
            kind = rng.choice(["read", "read", "write", "cas", "delete", "cas_delete"])
            roll = rng.random()
            outcome = "unknown" if roll < unknown else "fail" if roll < unknown + fail else "ok"
            effect = rng.uniform(start, end)
            if outcome == "unknown":
                effect = rng.choice([INF, effect, effect + rng.uniform(0, 5)])
            if outcome == "fail":
                effect = INF
            planned.append((effect, p, kind, outcome, start, end, f"v{next(counter)}"))
    value: str | None = None
    written: list[str | None] = [None]
    history = []
    for effect, p, kind, outcome, start, end, fresh in sorted(planned, key=lambda x: x[0]):
        end = INF if outcome == "unknown" else end
        applies = effect != INF
        if kind == "read":
            history.append(Op(kind, start, end, outcome, value=value, process=p))
            continue
        if kind in ("write", "delete"):
            history.append(
                Op(kind, start, end, outcome, fresh if kind == "write" else None, process=p)
            )
        else:
            expected = rng.choice(written[-3:])
            if outcome == "unknown" and rng.random() < 0.5:
                expected = value  # mostly take effect, if it does at all
            took = value == expected or (kind == "cas_delete" and value is None)
            result = took if outcome == "ok" else None
            new = fresh if kind == "cas" else None
            history.append(Op(kind, start, end, outcome, new, expected, result, p))
            applies = applies and took
        if applies:
            value = fresh if kind in ("write", "cas") else None
            written.append(value)
    return history, len(history)


def mutate(rng: random.Random, history: list[Op]) -> list[Op]:
    """Change one answer: a read's value, or a cas's result."""
    values = [o.value for o in history if o.value is not None] + [None, "never"]
    answered = [i for i, o in enumerate(history) if o.outcome == "ok" and o.kind != "write"]
    if not answered:
        return history
    i = rng.choice(answered)
    op = history[i]
    changed = list(history)
    if op.kind == "read":
        changed[i] = Op(
            "read", op.invoke, op.complete, "ok", rng.choice(values), process=op.process
        )
    elif op.kind in ("cas", "cas_delete"):
        changed[i] = Op(op.kind, op.invoke, op.complete, "ok", op.value, op.expected, not op.result)
    return changed


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force_on_random_small_histories(seed: int) -> None:
    rng = random.Random(seed)
    agreed = {True: 0, False: 0}
    for _ in range(200):
        processes, per_process = rng.choice([(2, 3), (3, 2), (4, 1), (7, 1), (2, 2)])
        history, _ = simulate(rng, processes, per_process, unknown=0.15, fail=0.1)
        if rng.random() < 0.6:
            history = mutate(rng, history)
        expected = brute_force(history)
        verdict = check(history)
        assert verdict.valid is expected, "\n".join(o.describe() for o in history)
        agreed[expected] += 1
    # both kinds were met, so the comparison means something
    assert agreed[True] > 10 and agreed[False] > 10, agreed


def test_negative_control_brute_force_and_checker_both_reject_a_stale_read() -> None:
    history = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    assert brute_force(history) is False
    assert check(history).valid is False
    assert brute_force(history[:2]) is True and check(history[:2]).valid is True
