"""Rules that span tables: what must not go while something refers to it, and the join
that spends a token and adds a member in one step. The FSM's appliers call these, so each
stays one store call; a new kind of reference (instances using an image or a volume) is
added here. Like all of state/, it knows nothing of Raft or the API.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import images, lvm, nodes, services, tokens, volumes
from symphonyd.state.store import Store, failure

__all__ = ["add_node_with_token", "delete_image", "delete_service"]


def delete_image(store: Store, image_id: str) -> dict[str, Any]:
    """Delete an image no volume uses (the check and the delete are one step)."""
    users = volumes.using_image(store, image_id)
    if users:
        names = ", ".join(sorted(v["name"] for v in users))
        return failure("conflict", f"image {image_id} is used by volumes: {names}")
    return images.delete(store, image_id)


def delete_service(store: Store, service_id: str) -> dict[str, Any]:
    """Delete a service that holds no volume, volume group or physical volume."""
    users = sorted(v["name"] for v in volumes.all_volumes(store) if v["service_id"] == service_id)
    if users:
        return failure("conflict", f"service {service_id} still has volumes: {', '.join(users)}")
    held = [
        r.get("name") or r["device"]
        for table in (lvm.VGS, lvm.PVS)
        for r in lvm.all_records(store, table)
        if r["service_id"] == service_id
    ]
    if held:
        return failure(
            "conflict",
            f"service {service_id} still has volume groups or physical volumes: {', '.join(held)}",
        )
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
