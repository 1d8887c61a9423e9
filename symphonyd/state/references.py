"""Rules that span tables: what must not go while something refers to it, and the join
that spends a token and adds a member in one step. The FSM's appliers call these, so each
stays one store call; a new kind of reference (instances using an image or a volume) is
added here. Like all of state/, it knows nothing of Raft or the API.

Instances: an image is needed while an instance made from it exists; a volume cannot be
removed while an instance uses it (its root volume goes with the instance); a service
cannot go while it holds instances. Placing an instance (as it is created, or later by
the leader) creates its root volume on the same node in the same step, and removing one
marks its root volume for removal.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import (
    images,
    instance_fit,
    instances,
    lvm,
    nodes,
    services,
    tokens,
    volumes,
)
from symphonyd.state.store import Store, failure

__all__ = [
    "add_node_with_token",
    "attach_volume",
    "create_instance",
    "delete_image",
    "delete_instance",
    "delete_service",
    "detach_volume",
    "place_instance",
    "service_holds",
    "update_volume",
]


def delete_image(store: Store, image_id: str) -> dict[str, Any]:
    """Delete an image no instance or volume uses (the check and the delete are one step)."""
    made = instances.using_image(store, image_id)
    if made:
        names = ", ".join(sorted(i["name"] for i in made))
        return failure("conflict", f"image {image_id} is used by instances: {names}")
    users = volumes.using_image(store, image_id)
    if users:
        names = ", ".join(sorted(v["name"] for v in users))
        return failure("conflict", f"image {image_id} is used by volumes: {names}")
    return images.delete(store, image_id)


def update_volume(
    store: Store, volume_id: str, fields: dict[str, Any], expect_status: str | None = None
) -> dict[str, Any]:
    """Change a volume; marking it for removal is refused while an instance uses it."""
    if fields.get("status") == "deleting":
        users = instances.using_volume(store, volume_id)
        if users:
            names = ", ".join(sorted(i["name"] for i in users))
            return failure(
                "conflict",
                f"volume {volume_id} is attached to instance {names}: detach it first",
            )
    return volumes.update(store, volume_id, fields, expect_status)


def create_instance(
    store: Store, instance: dict[str, Any], placing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Record a new instance; the data volumes it asks for must be ready, unused and on
    one node (where it is then placed). With `placing` ({candidates, root_volume_id}) it
    is placed in the same step when one of the candidates can take it now
    (`instance_fit.place_new`), else left for the leader."""
    nodes_of = set()
    for volume_id in instance.get("volumes", []):
        volume = volumes.get(store, volume_id)
        if volume is None:
            return failure("not_found", f"no volume {volume_id}")
        users = [i["name"] for i in instances.using_volume(store, volume_id)]
        if users:
            return failure(
                "conflict", f"volume {volume['name']} is attached to instance {', '.join(users)}"
            )
        if volume["status"] != "ready":
            return failure("conflict", f"volume {volume['name']} is {volume['status']}, not ready")
        nodes_of.add(volume["node"])
    if len(nodes_of) > 1:
        return failure(
            "conflict", "the volumes are on different nodes: " + ", ".join(sorted(nodes_of))
        )
    made = instances.create(store, instance)
    if not made["ok"] or placing is None:
        return made
    candidates = set(placing["candidates"])
    placed = instance_fit.place_new(store, made["instance"], candidates, placing["root_volume_id"])
    return {"ok": True, **placed} if placed is not None else made


def attach_volume(store: Store, instance_id: str, volume_id: str, now: str) -> dict[str, Any]:
    """Attach a ready data volume to an instance on the same node (its node's agent puts
    it in the domain): refused while another instance uses it."""
    record = instances.get(store, instance_id)
    volume = volumes.get(store, volume_id)
    if record is None:
        return failure("not_found", f"no instance {instance_id}")
    if volume is None:
        return failure("not_found", f"no volume {volume_id}")
    if record["status"] in ("failed", "deleting"):
        return failure("conflict", f"instance {record['name']} is {record['status']}")
    if volume_id in record.get("volumes", []):
        return failure("conflict", f"volume {volume['name']} is already attached to it")
    users = [i["name"] for i in instances.using_volume(store, volume_id)]
    if users:
        return failure(
            "conflict", f"volume {volume['name']} is attached to instance {', '.join(users)}"
        )
    if volume["status"] != "ready":
        return failure("conflict", f"volume {volume['name']} is {volume['status']}, not ready")
    if record["node"] is not None and volume["node"] != record["node"]:
        return failure(
            "conflict",
            f"volume {volume['name']} is on node {volume['node']}, instance {record['name']} "
            f"on node {record['node']}: a volume is attached on its own node",
        )
    fields = {"volumes": [*record.get("volumes", []), volume_id], "updated_at": now}
    return instances.update(store, instance_id, fields)


def detach_volume(store: Store, instance_id: str, volume_id: str, now: str) -> dict[str, Any]:
    """Take a data volume off an instance's wish list; it stays in use until the domain
    no longer holds it (the agent removes it from `applied`)."""
    record = instances.get(store, instance_id)
    if record is None:
        return failure("not_found", f"no instance {instance_id}")
    if volume_id not in record.get("volumes", []):
        return failure("conflict", f"volume {volume_id} is not attached to {record['name']}")
    wanted = [v for v in record["volumes"] if v != volume_id]
    return instances.update(store, instance_id, {"volumes": wanted, "updated_at": now})


def place_instance(
    store: Store, instance_id: str, node: str, service_id: str, root_volume: dict[str, Any]
) -> dict[str, Any]:
    """Place a pending instance on a node's compute service and create its root volume,
    already placed on that node's block service (both or neither)."""
    record = instances.get(store, instance_id)
    if record is None:
        return failure("not_found", f"no instance {instance_id}")
    if record["node"] is not None or record["status"] != "pending":
        return failure("conflict", f"instance {instance_id} is already placed ({record['status']})")
    made = volumes.create(store, root_volume)
    if not made["ok"]:
        return made
    instances.place(store, instance_id, node, service_id)
    result = instances.update(store, instance_id, {"root_volume_id": root_volume["id"]})
    return {**result, "volume": made["volume"]}


def delete_instance(store: Store, instance_id: str, keep_volumes: bool, now: str) -> dict[str, Any]:
    """Remove an instance record (its domain is gone); its root volume, and its data
    volumes unless `keep_volumes`, are marked for removal (their node's block agent
    removes them)."""
    record = instances.get(store, instance_id)
    if record is None:
        return failure("not_found", f"no instance {instance_id}")
    instances.delete(store, instance_id)
    doomed: list[str] = [record["root_volume_id"]] if record.get("root_volume_id") else []
    if not keep_volumes:
        doomed += list(record.get("volumes", []))
        doomed += [v for v in instances.applied_volumes(record) if v not in doomed]
    doomed += [v for v in sorted(instances.moving_volumes(record)) if v not in doomed]
    volumes.discard(store, doomed, now)
    return {"ok": True}


def service_holds(store: Store, service_id: str) -> str | None:
    """What keeps a service from going (its volumes, instances, volume groups or physical
    volumes), as the refusal says it; None when it holds nothing."""
    users = sorted(
        v.get("name") or v["id"]
        for v in volumes.all_volumes(store)
        if v["service_id"] == service_id
    )
    if users:
        return f"service {service_id} still has volumes: {', '.join(users)}"
    held_instances = sorted(
        i.get("name") or i["id"] for i in instances.on_service(store, service_id)
    )
    if held_instances:
        return f"service {service_id} still has instances: {', '.join(held_instances)}"
    held = [
        r.get("name") or r["device"]
        for table in (lvm.VGS, lvm.PVS)
        for r in lvm.all_records(store, table)
        if r["service_id"] == service_id
    ]
    if held:
        return f"service {service_id} still has volume groups or physical volumes: " + ", ".join(
            held
        )
    return None


def delete_service(store: Store, service_id: str) -> dict[str, Any]:
    """Delete a service that holds no volume, volume group or physical volume."""
    why = service_holds(store, service_id)
    if why is not None:
        return failure("conflict", why)
    return services.delete(store, service_id)


def add_node_with_token(
    store: Store, node: dict[str, Any], token: dict[str, Any] | None
) -> dict[str, Any]:
    """Add a member; with a `token`, only if that join token is usable, and spend it (both
    or neither)."""
    if token:
        record = tokens.get(store, token["id"])
        problem = tokens.check_usable(record, token["secret_sha256"], token["now"])
        problem = problem or nodes.check_addable(store, node)
        if problem:
            return failure(*problem)
        tokens.use(store, token["id"], token["secret_sha256"], token["now"], node["name"])
    return nodes.add(store, node)
