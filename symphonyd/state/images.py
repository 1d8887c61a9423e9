"""The images table: image metadata, by id.

A record: id, name, description, fingerprint (sha256 hex, once known), size, virtual_size,
format (qcow2, raw, iso), status (`importing`, `ready`, `failed`), status_message,
progress (bytes imported so far), node (where it was imported), holders (nodes holding a
verified copy), created_at, updated_at. Names are unique among images that are not
`failed`. The files themselves live on the nodes (`<data-dir>/images/sha256/<hex>`).
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import lookup
from symphonyd.state.store import Record, Store, failure

TABLE = "images"


def get(store: Store, image_id: str) -> Record | None:
    return store.get(TABLE, image_id)


def all_images(store: Store) -> list[Record]:
    return store.table(TABLE).values()


def find(store: Store, ref: str) -> list[Record]:
    """Images `ref` may mean (`lookup.matches`: id, name, unique id prefix)."""
    return lookup.matches(all_images(store), ref, by_id=lambda i: get(store, i))


def name_taken(store: Store, name: str, except_id: str | None = None) -> bool:
    return any(
        r["name"] == name and r["status"] != "failed" and r["id"] != except_id
        for r in all_images(store)
    )


def referenced_fingerprints(store: Store) -> set[str]:
    return {r["fingerprint"] for r in all_images(store) if r.get("fingerprint")}


def create(store: Store, image: dict[str, Any]) -> dict[str, Any]:
    if get(store, image["id"]) is not None:
        return failure("conflict", f"image {image['id']} already exists")
    if name_taken(store, image["name"]):
        return failure("conflict", f"an image named {image['name']!r} already exists")
    return {"ok": True, "image": store.put(TABLE, image["id"], image)}


def update(
    store: Store, image_id: str, fields: dict[str, Any], expect_status: str | None = None
) -> dict[str, Any]:
    """Change fields; with `expect_status`, only while the image is in that status (so a
    late progress or failure entry never overwrites a final state)."""
    old = get(store, image_id)
    if old is None:
        return failure("not_found", f"no image {image_id}")
    if expect_status is not None and old["status"] != expect_status:
        return failure("conflict", f"image {image_id} is {old['status']}, not {expect_status}")
    return {"ok": True, "image": store.put(TABLE, image_id, {**old, **fields})}


def add_holder(store: Store, image_id: str, node: str, now: str) -> dict[str, Any]:
    old = get(store, image_id)
    if old is None:
        return failure("not_found", f"no image {image_id}")
    if node in old["holders"]:
        return {"ok": True, "image": old}
    holders = sorted([*old["holders"], node])
    return {
        "ok": True,
        "image": store.put(TABLE, image_id, {**old, "holders": holders, "updated_at": now}),
    }


def remove_holder(store: Store, image_id: str, node: str, now: str) -> dict[str, Any]:
    old = get(store, image_id)
    if old is None:
        return failure("not_found", f"no image {image_id}")
    holders = [h for h in old["holders"] if h != node]
    return {
        "ok": True,
        "image": store.put(TABLE, image_id, {**old, "holders": holders, "updated_at": now}),
    }


def delete(store: Store, image_id: str) -> dict[str, Any]:
    if store.delete(TABLE, image_id) is None:
        return failure("not_found", f"no image {image_id}")
    return {"ok": True}
