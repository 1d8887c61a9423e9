"""The KV table: Consul-compatible keys and values (the Consul replacement).

Writes here are called only by the FSM with already validated input. `put` and `delete`
implement Consul's check-and-set: `cas=0` means "only if absent", `cas=N` means "only if
the key's ModifyIndex (our mod_revision) is N".
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store

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


def index_of(store: Store, prefix: str, recurse: bool) -> int:
    """The X-Consul-Index of a read: the highest mod_revision it covers (or the store's)."""
    if recurse:
        records = list_prefix(store, prefix)
        return max((r["mod_revision"] for r in records), default=0) or store.revision
    record = get(store, prefix)
    return record["mod_revision"] if record else store.revision


def put(store: Store, key: str, value: bytes, flags: int, cas: int | None) -> dict[str, Any]:
    old = get(store, key)
    if cas is not None:
        if cas == 0 and old is not None:
            return {"ok": False}
        if cas != 0 and (old is None or old["mod_revision"] != cas):
            return {"ok": False}
    record = store.put(TABLE, key, {"key": key, "value": value, "flags": flags, "lock_index": 0})
    return {"ok": True, "modify_index": record["mod_revision"]}


def delete(store: Store, key: str, recurse: bool, cas: int | None) -> dict[str, Any]:
    if recurse:
        for k in list(store.table(TABLE).keys_with_prefix(key)):
            store.delete(TABLE, k)
        return {"ok": True}
    old = get(store, key)
    if cas is not None and (old is None or old["mod_revision"] != cas):
        return {"ok": False}
    store.delete(TABLE, key)
    return {"ok": True}
