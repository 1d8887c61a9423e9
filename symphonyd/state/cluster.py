"""The cluster table: one record, `cluster`, made by `init`: id, created_at, the API
certificate's fingerprint, and `config`, the cluster-wide settings. Its presence means the
store belongs to an initialised cluster.
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


# Cluster-wide settings: name -> (minimum, maximum, default). A setting whose default is
# a float takes any number in its range (ratios); the others take integers.
SETTINGS: dict[str, tuple[float, float, float]] = {
    "images.min_replicas": (1, 100, 2),
    "deployments.step_patience": (1, 86400, 30),  # seconds a step waits on a lost node
    "images.failed_keep": (1, 31536000, 86400),  # seconds a failed image record is kept
    "compute.cpu_overcommit": (1.0, 64.0, 4.0),  # vCPUs placed per host CPU
    "compute.memory_overcommit": (1.0, 4.0, 1.0),  # guest memory placed per byte of RAM
}
# Settings added after schema 1: the schema every member needs before one is set (an
# older node would refuse the key, and the store would diverge).
INTRODUCED = {
    "deployments.step_patience": 4,
    "images.failed_keep": 5,
    "compute.cpu_overcommit": 6,
    "compute.memory_overcommit": 6,
}


def config(store: Store) -> dict[str, Any]:
    """Every setting with its value (the default where none was set)."""
    stored = (get(store) or {}).get("config", {})
    return {name: stored.get(name, spec[2]) for name, spec in SETTINGS.items()}


def set_config(store: Store, key: str, value: Any) -> dict[str, Any]:
    record = get(store)
    if record is None:
        return failure("not_found", "the cluster is not initialised")
    if key not in SETTINGS:
        return failure("invalid", f"unknown setting {key!r}")
    merged = {**record.get("config", {}), key: value}
    return {"ok": True, "config": store.put(TABLE, KEY, {**record, "config": merged})["config"]}
