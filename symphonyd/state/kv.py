"""The KV table: Consul-compatible keys and values (the Consul replacement).

Writes here are called only by the FSM with already validated input. `put` and `delete`
implement Consul's check-and-set: `cas=0` means "only if absent", `cas=N` means "only if
the key's ModifyIndex (our mod_revision) is N".
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store, Table

TABLE = "kv"


def get(store: Store, key: str) -> Record | None:
    return store.get(TABLE, key)


def list_prefix(store: Store, prefix: str) -> list[Record]:
    table = store.table(TABLE)
    return [table.records[k] for k in table.keys_with_prefix(prefix)]


def keys(store: Store, prefix: str, separator: str | None) -> list[str]:
    """Consul's `?keys&separator=`: keys under prefix, folded at the first separator."""
    out: list[str] = []
    for key in store.table(TABLE).keys_with_prefix(prefix):
        if separator:
            cut = key.find(separator, len(prefix))
            if cut >= 0:
                key = key[: cut + len(separator)]
        if not out or out[-1] != key:
            out.append(key)
    return out


TOMBSTONES = "kv_tombstones"
MAX_TOMBSTONES = 50_000


def _tombstones(store: Store) -> Table:
    table = store.indexes.get(TOMBSTONES)
    if table is None:
        table = store.indexes[TOMBSTONES] = Table(TOMBSTONES)
    return table


def _bury(store: Store, key: str) -> None:
    """Remember when a key was deleted, so a blocking read on its prefix sees the delete
    (Consul's tombstones). Old tombstones are dropped past MAX_TOMBSTONES: the floor then
    rises to the newest dropped, which only wakes watchers early, never late."""
    table = _tombstones(store)
    table._put(key, {"revision": store.next_revision()})
    if len(table) > MAX_TOMBSTONES:
        ordered = sorted(table.records.items(), key=lambda item: item[1]["revision"])
        for old_key, record in ordered[: len(ordered) // 2]:
            table._delete(old_key)
            store.index_floor = max(store.index_floor, record["revision"])


def index_of(store: Store, prefix: str, recurse: bool) -> int:
    """The X-Consul-Index of a read: the revision of the last change it covers, deletions
    included (or, for a key that never existed, the store's revision)."""
    tombstones = _tombstones(store)
    if recurse:
        live = max((r["mod_revision"] for r in list_prefix(store, prefix)), default=0)
        buried = max(
            (tombstones.records[k]["revision"] for k in tombstones.keys_with_prefix(prefix)),
            default=0,
        )
        return max(live, buried, store.index_floor) or store.revision
    record = get(store, prefix)
    if record:
        return int(record["mod_revision"])
    buried_key = tombstones.get(prefix)
    if buried_key:
        return max(int(buried_key["revision"]), store.index_floor)
    return store.revision


def put(store: Store, key: str, value: bytes, flags: int, cas: int | None) -> dict[str, Any]:
    old = get(store, key)
    if cas is not None:
        if cas == 0 and old is not None:
            return {"ok": False}
        if cas != 0 and (old is None or old["mod_revision"] != cas):
            return {"ok": False}
    record = store.put(TABLE, key, {"key": key, "value": value, "flags": flags, "lock_index": 0})
    _tombstones(store)._delete(key)
    return {"ok": True, "modify_index": record["mod_revision"]}


def delete(store: Store, key: str, recurse: bool, cas: int | None) -> dict[str, Any]:
    if recurse:
        for k in list(store.table(TABLE).keys_with_prefix(key)):
            store.delete(TABLE, k)
            _bury(store, k)
        return {"ok": True}
    old = get(store, key)
    if old is None:
        return {"ok": True}  # Consul: deleting a missing key succeeds, with or without cas
    if cas is not None and old["mod_revision"] != cas:
        return {"ok": False}
    store.delete(TABLE, key)
    _bury(store, key)
    return {"ok": True}
