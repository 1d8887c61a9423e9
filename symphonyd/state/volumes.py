"""The volumes table: block volumes, by id.

A record: id, name, node (None until the leader's scheduler places it), placement (what
the user asked for: {node, pool}, each None when free), service_id, pool, size (bytes,
what the user asked for; a resize changes it and the agent grows the volume to it),
image_id, overlay, status (`pending`, `creating`, `ready`, `failed`, `deleting`),
status_message (text for people), last_error, format, allocated, snapshots (names asked
for) and snapshots_done, created_at, updated_at. Names are unique.

`last_error` is None, or what the last change of a ready record did not do: `{action,
message, at}` (`change_error`). Its agent sets it when the change fails and clears it when
a change succeeds; every request that records a new wish clears it in its own patch, so
an error seen after a request was written came after it. Records written before the
field existed read as `last_error: None` (`with_last_error`); the write paths here keep
stored records as they are, so applying an entry never depends on the reader's version.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import lookup
from symphonyd.state.store import Record, Store, failure

TABLE = "volumes"


def with_last_error(record: Record) -> Record:
    """A record as read (volumes, physical volumes, groups): one written before
    `last_error` existed has it None. A record that has it is returned as stored."""
    return record if "last_error" in record else {**record, "last_error": None}


def change_error(action: str, message: str, at: str) -> dict[str, str]:
    """The `last_error` of a record whose change `action` (resize, snapshot, remove) failed
    at `at` (RFC 3339) with `message`."""
    return {"action": action, "message": message, "at": at}


def get(store: Store, volume_id: str) -> Record | None:
    record = store.get(TABLE, volume_id)
    return with_last_error(record) if record is not None else None


def all_volumes(store: Store) -> list[Record]:
    return [with_last_error(r) for r in store.table(TABLE).values()]


def find(store: Store, ref: str) -> list[Record]:
    """Volumes `ref` may mean (`lookup.matches`: id, name, unique id prefix)."""
    return lookup.matches(all_volumes(store), ref, by_id=lambda i: get(store, i))


def using_image(store: Store, image_id: str) -> list[Record]:
    return [r for r in all_volumes(store) if r.get("image_id") == image_id]


def create(store: Store, volume: dict[str, Any]) -> dict[str, Any]:
    if store.get(TABLE, volume["id"]) is not None:
        return failure("conflict", f"volume {volume['id']} already exists")
    if any(r["name"] == volume["name"] for r in all_volumes(store)):
        return failure("conflict", f"a volume named {volume['name']!r} already exists")
    return {"ok": True, "volume": store.put(TABLE, volume["id"], volume)}


def update(
    store: Store, volume_id: str, fields: dict[str, Any], expect_status: str | None = None
) -> dict[str, Any]:
    """Change fields; with `expect_status`, only if the volume is in that status (how an
    agent claims work: two nodes never act on one volume)."""
    old = store.get(TABLE, volume_id)
    if old is None:
        return failure("not_found", f"no volume {volume_id}")
    if expect_status is not None and old["status"] != expect_status:
        return failure("conflict", f"volume {volume_id} is {old['status']}, not {expect_status}")
    return {"ok": True, "volume": store.put(TABLE, volume_id, {**old, **fields})}


def place(store: Store, volume_id: str, node: str, service_id: str, pool: str) -> dict[str, Any]:
    """Assign a pending volume to a node's service, once: a volume already placed keeps
    its node (two schedulers, old and new leader, cannot both place it)."""
    old = store.get(TABLE, volume_id)
    if old is None:
        return failure("not_found", f"no volume {volume_id}")
    if old["node"] is not None or old["status"] != "pending":
        return failure("conflict", f"volume {volume_id} is already placed ({old['status']})")
    fields = {"node": node, "service_id": service_id, "pool": pool}
    return {"ok": True, "volume": store.put(TABLE, volume_id, {**old, **fields})}


def delete(store: Store, volume_id: str) -> dict[str, Any]:
    if store.delete(TABLE, volume_id) is None:
        return failure("not_found", f"no volume {volume_id}")
    return {"ok": True}


def discard(store: Store, volume_ids: list[str], now: str) -> None:
    """Let volumes go (an instance removed, a move finished or given up): one never made
    (`pending`, `failed`) is deleted, the others marked `deleting` for their node's agent."""
    for volume_id in volume_ids:
        volume = get(store, volume_id)
        if volume is None:
            continue
        if volume["status"] in ("pending", "failed"):
            delete(store, volume_id)
        else:
            update(
                store, volume_id, {"status": "deleting", "status_message": "", "updated_at": now}
            )
