"""Failed image records do not pile up: the leader removes each one once it has been
`failed` for `images.failed_keep` seconds (a cluster setting, default a day), long enough
for its reason to be read. A failed record never holds a file and no volume uses it, so
removing it loses nothing; the name it had was already free for a retry
(`state/lookup.py`). Runs as a leader-only loop; the choice itself (`stale_failed`) is
pure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from symphonyd.errors import SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import parse_rfc3339
from symphonyd.state import cluster as cluster_table
from symphonyd.state import images

__all__ = ["remove_stale_failed", "stale_failed"]

log = logging.getLogger("symphonyd.image")

LOOK_AGAIN = 300.0  # seconds between passes with nothing about to expire


def _age(record: Mapping[str, Any], now: datetime) -> float | None:
    changed = parse_rfc3339(record.get("updated_at"))
    return None if changed is None else (now - changed).total_seconds()


def stale_failed(
    records: Iterable[Mapping[str, Any]], now: datetime, keep: float
) -> tuple[list[str], float | None]:
    """The ids of failed records older than `keep` seconds, and the seconds until the next
    failed one is due (None: none is waiting)."""
    due, next_in = [], None
    for record in records:
        if record.get("status") != "failed":
            continue
        age = _age(record, now)
        if age is None:
            continue
        if age >= keep:
            due.append(str(record["id"]))
        else:
            next_in = keep - age if next_in is None else min(next_in, keep - age)
    return sorted(due), next_in


async def remove_stale_failed(cluster: Cluster) -> None:
    """The leader's loop: remove failed image records past their keep time."""
    while True:
        seen = cluster.store.revision
        with cluster.store.lock:
            keep = float(cluster_table.config(cluster.store)["images.failed_keep"])
            records = [dict(r) for r in images.all_images(cluster.store)]
        due, next_in = stale_failed(records, datetime.now().astimezone(), keep)
        for image_id in due:
            try:
                await cluster.propose_ok(Entry(EntryType.IMAGE_DELETE, {"id": image_id}))
                log.info("removed failed image %s (kept %.0f s)", image_id, keep)
            except SymphonyError as exc:
                log.warning("failed image %s: %s", image_id, exc)
        wait = LOOK_AGAIN if next_in is None else min(LOOK_AGAIN, next_in + 0.5)
        await cluster.wait_for_tables({"images", "cluster"}, seen, wait)
