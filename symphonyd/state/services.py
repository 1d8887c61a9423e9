"""The services table: a cloud service enabled on one host (`block`, `compute`), by id.

A record: id, node, type (`block`, `compute`), driver, pool, options, health ({ok,
message, checked_at}: written by the owning node only when it changes, `checked_at` being
when it was last written), capacity (block: {total, free} bytes, written when the free
space moved by more than 1% of the total or 64 MiB, whichever is more; compute: {cpus,
memory, hypervisor, virt_type}), created_at, updated_at.
One service of a type per node.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store, failure

TABLE = "services"


def get(store: Store, service_id: str) -> Record | None:
    return store.get(TABLE, service_id)


def all_services(store: Store) -> list[Record]:
    return store.table(TABLE).values()


def of_type(store: Store, kind: str) -> list[Record]:
    """The services of one type (`block`, `compute`)."""
    return [r for r in all_services(store) if r["type"] == kind]


def on_node(store: Store, node: str, kind: str) -> Record | None:
    for record in all_services(store):
        if record["node"] == node and record["type"] == kind:
            return record
    return None


def create(store: Store, service: dict[str, Any]) -> dict[str, Any]:
    if on_node(store, service["node"], service["type"]) is not None:
        return failure(
            "conflict", f"node {service['node']} already has a {service['type']} service"
        )
    return {"ok": True, "service": store.put(TABLE, service["id"], service)}


def update(store: Store, service_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    old = get(store, service_id)
    if old is None:
        return failure("not_found", f"no service {service_id}")
    return {"ok": True, "service": store.put(TABLE, service_id, {**old, **fields})}


def delete(store: Store, service_id: str) -> dict[str, Any]:
    if store.delete(TABLE, service_id) is None:
        return failure("not_found", f"no service {service_id}")
    return {"ok": True}
