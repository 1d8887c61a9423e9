"""The cluster table: one record, `cluster`, made by `init`: id, name, created_at, the API
certificate's fingerprint. Its presence means the store belongs to an initialised cluster.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store, failure

TABLE = "cluster"
KEY = "cluster"


def get(store: Store) -> Record | None:
    return store.get(TABLE, KEY)


def init(store: Store, info: dict[str, Any]) -> dict[str, Any]:
    if get(store) is not None:
        return failure("conflict", "the cluster is already initialised")
    return {"ok": True, "cluster": store.put(TABLE, KEY, info)}
