"""Paths between the states of a lifecycle: which states to leave and which to enter.

The applied states of a lifecycle form a stack: the initial state at the bottom, each state
above entered by a transition from the one below it. Leaving pops the top state; entering
pushes a successor of the top that is not applied yet (a state is never applied twice, so
cycles in a graph cannot loop). Any shortest way from one stack to a target state is some
leaves followed by some enters (an enter followed by a leave undoes itself), so `moves`
tries every depth to leave down to and searches forward from there breadth-first, keeping
the fewest steps and, among those, the fewest leaves. Going sideways from one branch to
another is leaving back to where they part, then entering along the other.

`goto_steps` and `call_steps` turn moves into steps carrying the provide to call and the
requires it needs. This module only computes: it calls nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

from symphonyd.errors import Conflict, Invalid, NotFound

if TYPE_CHECKING:
    from symphonyd.lifecycle.model import AnyRequire, Lifecycle, Provide

__all__ = [
    "Move",
    "Step",
    "call_steps",
    "check_applied",
    "find_cycle",
    "goto_steps",
    "moves",
    "reachable",
    "shortest_forward",
    "stack_after",
]

H = TypeVar("H", bound=Hashable)
Move: TypeAlias = tuple[Literal["leave", "enter"], str]


def reachable(edges: Mapping[H, Iterable[H]], start: H) -> set[H]:
    """Every node reachable from `start` (itself included)."""
    seen = {start}
    queue = deque([start])
    while queue:
        for successor in edges.get(queue.popleft(), ()):
            if successor not in seen:
                seen.add(successor)
                queue.append(successor)
    return seen


def find_cycle(edges: Mapping[H, Iterable[H]]) -> list[H] | None:
    """A cycle as [a, b, ..., a], or None. Iterative, so deep graphs cannot overflow."""
    done: set[H] = set()
    for root in edges:
        if root in done:
            continue
        path: list[H] = [root]
        on_path = {root}
        iterators = [iter(edges.get(root, ()))]
        while iterators:
            try:
                successor = next(iterators[-1])
            except StopIteration:
                iterators.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
                continue
            if successor in on_path:
                return [*path[path.index(successor) :], successor]
            if successor not in done:
                path.append(successor)
                on_path.add(successor)
                iterators.append(iter(edges.get(successor, ())))
    return None


def shortest_forward(
    edges: Mapping[H, Iterable[H]], start: H, goal: H, avoid: Iterable[H] = ()
) -> list[H] | None:
    """The nodes to enter, in order, to go from `start` to `goal` along edges without
    passing through `avoid` (breadth-first: fewest steps; ties by declaration order).
    [] if start is goal; None if there is no way."""
    if start == goal:
        return []
    blocked = set(avoid) | {start}
    previous: dict[H, H] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in edges.get(node, ()):
            if successor in blocked or successor in previous:
                continue
            previous[successor] = node
            if successor == goal:
                way = [goal]
                while way[-1] in previous and previous[way[-1]] != start:
                    way.append(previous[way[-1]])
                return way[::-1]
            queue.append(successor)
    return None


def check_applied(edges: Mapping[str, Iterable[str]], applied: Sequence[str]) -> None:
    """`applied` must be a stack: known states, none twice, each reached from the one below."""
    if not applied:
        raise Invalid("the applied states are empty: the initial state is always applied")
    unknown = [state for state in applied if state not in edges]
    if unknown:
        raise Invalid(f"unknown applied states {unknown} (states: {', '.join(edges)})")
    if len(set(applied)) != len(applied):
        raise Invalid(f"a state is applied twice in {' -> '.join(applied)}")
    for below, above in pairwise(applied):
        if above not in edges[below]:
            raise Invalid(
                f"applied states {' -> '.join(applied)}: no transition {below} -> {above}"
            )


def moves(edges: Mapping[str, Iterable[str]], applied: Sequence[str], target: str) -> list[Move]:
    """The shortest list of ("leave" | "enter", state) taking the stack `applied` to one
    whose top is `target`. NotFound for an unknown target, Conflict if it cannot be reached."""
    check_applied(edges, applied)
    if target not in edges:
        raise NotFound(f"no state {target!r} (states: {', '.join(edges)})")
    best: list[Move] | None = None
    for leaves in range(len(applied)):
        if best is not None and leaves >= len(best):
            break
        kept = applied[: len(applied) - leaves]
        way = shortest_forward(edges, kept[-1], target, avoid=kept)
        if way is None:
            continue
        left: list[Move] = [("leave", state) for state in reversed(applied[len(kept) :])]
        candidate = left + [("enter", state) for state in way]
        if best is None or len(candidate) < len(best):
            best = candidate
    if best is None:
        raise Conflict(f"state {target} cannot be reached from {' -> '.join(applied)}")
    return best


def stack_after(applied: Sequence[str], steps: Iterable[Move | Step]) -> list[str]:
    """The applied states once the moves (or steps) are done; checks each is possible."""
    stack = list(applied)
    for step in steps:
        action, state = (step.action, step.state) if isinstance(step, Step) else step
        if action == "leave":
            if not stack or stack[-1] != state:
                raise Invalid(f"cannot leave {state}: it is not the top of {stack}")
            stack.pop()
        elif action == "enter":
            if state in stack:
                raise Invalid(f"cannot enter {state}: it is already applied")
            stack.append(state)
    return stack


@dataclass(frozen=True)
class Step:
    """One thing to do on a node: leave a state, enter one (its `enter` provide), or call a
    provide. `requires` are what the provide needs; `cross` the states whose
    `cross(**flags)` runs after a call with flags."""

    action: Literal["leave", "enter", "call"]
    lifecycle: str
    state: str
    provide: Provide | None = None
    requires: tuple[AnyRequire, ...] = ()
    cross: tuple[str, ...] = ()

    @property
    def xpath(self) -> str:
        name = self.provide.name if self.provide is not None else self.action
        return f"{self.lifecycle}/{self.state}/{name}"


def _steps(lifecycle: type[Lifecycle], planned: list[Move]) -> list[Step]:
    steps = []
    for action, state in planned:
        if action == "leave":
            steps.append(Step("leave", lifecycle.name, state))
        else:
            enter = lifecycle.get_state(state).get_provide("enter")
            steps.append(Step("enter", lifecycle.name, state, enter, enter.requires))
    return steps


def goto_steps(lifecycle: type[Lifecycle], applied: Sequence[str], target: str) -> list[Step]:
    """The steps that make `target` the current (top) state of `lifecycle`."""
    _check_bottom(lifecycle, applied)
    return _steps(lifecycle, moves(lifecycle.edges(), applied, target))


def call_steps(
    lifecycle: type[Lifecycle], applied: Sequence[str], state: str, provide: str
) -> list[Step]:
    """The steps to call `provide` of `state`: none to move if the state is applied
    (anywhere on the stack), else the shortest way to it; then the call, unless the
    provide is `enter`, which entering the state already runs."""
    _check_bottom(lifecycle, applied)
    item = lifecycle.get_state(state).get_provide(provide)
    check_applied(lifecycle.edges(), applied)
    if state in applied:
        steps: list[Step] = []
        above = tuple(applied[applied.index(state) + 1 :])
    else:
        steps = _steps(lifecycle, moves(lifecycle.edges(), applied, state))
        above = ()
    if provide != "enter":
        cross = above if item.flags else ()
        steps.append(Step("call", lifecycle.name, state, item, item.requires, cross))
    return steps


def _check_bottom(lifecycle: type[Lifecycle], applied: Sequence[str]) -> None:
    if applied and applied[0] != lifecycle.initial():
        raise Invalid(
            f"applied states of {lifecycle.name} must start at its initial state "
            f"{lifecycle.initial()}, not {applied[0]}"
        )
