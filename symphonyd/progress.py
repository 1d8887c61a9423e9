"""This node's long work in progress: how far each volume being made (and, later, each
instance being created) is, kept in the owning node's memory, never in the Raft log.

The agent doing the work tracks a `reconcile.Progress` on the board for as long as it
runs (`track`); the API reads it when asked (`GET /v1/progress` on the owning node, and
the `progress` field of a record, which any node fetches from the owner). Nothing is
written while work progresses, so long work does not make the log grow. It must not know
any service.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from symphonyd.reconcile import Progress

__all__ = ["ProgressBoard"]


class ProgressBoard:
    def __init__(self) -> None:
        self._work: dict[tuple[str, str], Progress] = {}

    @contextmanager
    def track(self, table: str, record_id: str) -> Iterator[Progress]:
        """A `Progress` for the work on one record, shown while the block runs."""
        progress = Progress()
        self._work[(table, record_id)] = progress
        try:
            yield progress
        finally:
            if self._work.get((table, record_id)) is progress:
                del self._work[(table, record_id)]

    def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        """{stage, done, total} of the work on a record, or None (no work, or no stage yet)."""
        progress = self._work.get((table, record_id))
        if progress is None or progress.stage is None:
            return None
        return progress.snapshot()

    def all(self) -> list[dict[str, Any]]:
        """Every piece of work with a stage: [{table, id, stage, done, total}]."""
        found = []
        for (table, record_id), progress in sorted(self._work.items()):
            if progress.stage is not None:
                found.append({"table": table, "id": record_id, **progress.snapshot()})
        return found
