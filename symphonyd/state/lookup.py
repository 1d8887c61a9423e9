"""One rule for finding a record by what a user typed: its id, its name (or another key,
such as a physical volume's device), or a unique id prefix of at least 4 characters.

The id wins, then the key, then the prefix. Several matches are ambiguous (409 Conflict,
naming the ids), except that records which are `failed` or `deleting` do not make a name
ambiguous when exactly one live record has it (a retry under the same name after a failed
import). Nothing here knows Raft or the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from symphonyd.errors import Conflict, NotFound

__all__ = ["DEAD_STATUSES", "MIN_PREFIX", "matches", "resolve_one"]

DEAD_STATUSES = frozenset({"failed", "deleting"})
MIN_PREFIX = 4

R = TypeVar("R", bound=Mapping[str, Any])


def matches(
    records: Iterable[R],
    ref: str,
    *,
    key: str | None = "name",
    by_id: Callable[[str], R | None] | None = None,
) -> list[R]:
    """The records `ref` may mean: [the one with that id], else those whose `key` is
    `ref`, else those whose id starts with `ref` (4 characters or more)."""
    every = list(records)
    exact = by_id(ref) if by_id is not None else next((r for r in every if r["id"] == ref), None)
    if exact is not None:
        return [exact]
    if key is not None:
        named = [r for r in every if r.get(key) == ref]
        if named:
            return named
    if len(ref) < MIN_PREFIX:
        return []
    return [r for r in every if r["id"].startswith(ref)]


def resolve_one(found: Sequence[R], ref: str, what: str) -> R:
    """The one record of `found` (from `matches`), or NotFound / Conflict."""
    if len(found) > 1:
        live = [r for r in found if r.get("status") not in DEAD_STATUSES]
        if len(live) == 1:
            return live[0]
    if not found:
        raise NotFound(f"no {what} {ref!r}")
    if len(found) > 1:
        ids = ", ".join(str(r["id"])[:12] for r in found)
        raise Conflict(
            f"{ref!r} matches several {what}s ({ids}); use the id", ids=[r["id"] for r in found]
        )
    return found[0]
