"""The instances table: virtual machines, by id.

A record: id, name (a hostname, unique), node and service_id (None until it is placed:
by its create entry, or later by the leader), placement ({node}: what the user asked
for), image_id, cpus, memory and disk (bytes), root_volume_id (the volume made from the
image when the instance is placed), volumes (ids of attached data volumes, in attach
order), network (`user` or `bridge=NAME`), user_data (text), network_config (a version-2
mapping or None), power (what the user wants: `running` or `stopped`), stop ({force,
timeout} of the stop asked for, or None), status, status_message, last_error ({action,
message, at} or None), domain ({vcpus, memory} the running domain has, as its node last
saw it; None before it is defined), applied ({cpus, memory, volumes: {volume id: disk
target}}: what the domain's definition holds, written by its node's agent; None before
it is defined), at_next_start (changes made to the definition of a running domain that
it takes only when it next starts, as text for people), created_at, updated_at.

A volume is in use by an instance while it is in its `volumes` (wanted) or in its
`applied` volumes (the domain still has it: a detach not yet done, or done only in the
definition of a domain that still runs), or while a move holds it (state/moves.py).

Statuses: `pending` (waiting for a place or for its node to take it), `creating`
(placed; its root volume, seed and domain being made, then its first start), `stopped`,
`starting`, `running`, `stopping`, `failed` (status_message says why), `deleting`.
Readers add `unknown` for an instance whose node cannot be reached (`api/instances.py`);
it is never stored.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import lookup
from symphonyd.state.store import Record, Store, failure

TABLE = "instances"

STATUSES = (
    "pending",
    "creating",
    "stopped",
    "starting",
    "running",
    "stopping",
    "failed",
    "deleting",
)
DEFINED = ("stopped", "starting", "running", "stopping")  # a domain exists for these


def get(store: Store, instance_id: str) -> Record | None:
    return store.get(TABLE, instance_id)


def all_instances(store: Store) -> list[Record]:
    return store.table(TABLE).values()


def find(store: Store, ref: str) -> list[Record]:
    """Instances `ref` may mean (`lookup.matches`: id, name, unique id prefix)."""
    return lookup.matches(all_instances(store), ref, by_id=lambda i: get(store, i))


def applied_volumes(record: Record) -> dict[str, str]:
    """The data volumes the instance's domain holds (volume id -> disk target)."""
    return dict((record.get("applied") or {}).get("volumes") or {})


def moving_volumes(record: Record) -> set[str]:
    """The volumes a move of the instance holds: its copies, and its sources once it has
    switched node (until the move finishes)."""
    move = record.get("move") or {}
    return set((move.get("volumes") or {}).values()) | set(move.get("sources") or [])


def using_volume(store: Store, volume_id: str) -> list[Record]:
    """Instances whose root or data volume is `volume_id` (wanted, still applied, or held
    by a move)."""
    return [
        r
        for r in all_instances(store)
        if r.get("root_volume_id") == volume_id
        or volume_id in r.get("volumes", [])
        or volume_id in applied_volumes(r)
        or volume_id in moving_volumes(r)
    ]


def using_image(store: Store, image_id: str) -> list[Record]:
    """Instances made, or to be made, from `image_id` whose root volume is still needed
    (not yet made, or still there)."""
    return [r for r in all_instances(store) if r.get("image_id") == image_id]


def on_service(store: Store, service_id: str) -> list[Record]:
    return [r for r in all_instances(store) if r.get("service_id") == service_id]


def create(store: Store, instance: dict[str, Any]) -> dict[str, Any]:
    if store.get(TABLE, instance["id"]) is not None:
        return failure("conflict", f"instance {instance['id']} already exists")
    if any(r["name"] == instance["name"] for r in all_instances(store)):
        return failure("conflict", f"an instance named {instance['name']!r} already exists")
    return {"ok": True, "instance": store.put(TABLE, instance["id"], instance)}


def update(
    store: Store, instance_id: str, fields: dict[str, Any], expect_status: str | None = None
) -> dict[str, Any]:
    """Change fields; with `expect_status`, only if the instance is in that status (how
    an agent claims work and how a state change never overwrites a newer wish)."""
    old = store.get(TABLE, instance_id)
    if old is None:
        return failure("not_found", f"no instance {instance_id}")
    if expect_status is not None and old["status"] != expect_status:
        return failure(
            "conflict", f"instance {instance_id} is {old['status']}, not {expect_status}"
        )
    return {"ok": True, "instance": store.put(TABLE, instance_id, {**old, **fields})}


def place(store: Store, instance_id: str, node: str, service_id: str) -> dict[str, Any]:
    """Assign a pending, unplaced instance to a node's compute service, once."""
    old = store.get(TABLE, instance_id)
    if old is None:
        return failure("not_found", f"no instance {instance_id}")
    if old["node"] is not None or old["status"] != "pending":
        return failure("conflict", f"instance {instance_id} is already placed ({old['status']})")
    fields = {"node": node, "service_id": service_id}
    return {"ok": True, "instance": store.put(TABLE, instance_id, {**old, **fields})}


def delete(store: Store, instance_id: str) -> dict[str, Any]:
    if store.delete(TABLE, instance_id) is None:
        return failure("not_found", f"no instance {instance_id}")
    return {"ok": True}
