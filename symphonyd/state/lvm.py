"""The LVM tables of block services: physical volumes (`pvs`) and volume groups (`vgs`).

A physical volume: id, node, service_id, device, status (`pending`, `creating`, `ready`,
`failed`, `deleting`), status_message, last_error, size, free, vg_id (the group using it,
or None), created_at, updated_at. A device is recorded once per node.

A volume group: id, name, node, service_id, pv_ids, status, status_message, last_error,
size, free, created_at, updated_at. Names are unique per node; the group's logical volumes
are the volumes whose pool is its name on its node. Making a group takes its physical
volumes (they must be ready and free); removing it gives them back. A group is marked
`deleting` only while no volume is in it, decided here so that the check and the change
are one step.

`last_error` is as for volumes (`volumes.change_error`): a removal lvm2 refused leaves the
record `ready` with `{action: "remove", message, at}`, cleared by the next removal request.
Readers see None on records written before the field (`volumes.with_last_error`).
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import lookup, volumes
from symphonyd.state.store import Record, Store, failure

PVS = "pvs"
VGS = "vgs"


def all_records(store: Store, table: str) -> list[Record]:
    return [volumes.with_last_error(r) for r in store.table(table).values()]


def get(store: Store, table: str, record_id: str) -> Record | None:
    record = store.get(table, record_id)
    return volumes.with_last_error(record) if record is not None else None


def find(store: Store, table: str, ref: str) -> list[Record]:
    """By id, by name (groups) or device (physical volumes), or by unique id prefix."""
    key = "name" if table == VGS else "device"
    return lookup.matches(
        all_records(store, table), ref, key=key, by_id=lambda i: get(store, table, i)
    )


def logical_volumes(store: Store, group: Record) -> list[Record]:
    return [
        v
        for v in volumes.all_volumes(store)
        if v["node"] == group["node"] and v["pool"] == group["name"]
    ]


def create_pv(store: Store, pv: dict[str, Any]) -> dict[str, Any]:
    for other in all_records(store, PVS):
        if other["node"] == pv["node"] and other["device"] == pv["device"]:
            return failure(
                "conflict",
                f"{pv['device']} on {pv['node']} is already physical volume {other['id']}",
            )
    return {"ok": True, "pv": store.put(PVS, pv["id"], pv)}


def create_vg(store: Store, vg: dict[str, Any]) -> dict[str, Any]:
    for other in all_records(store, VGS):
        if other["node"] == vg["node"] and other["name"] == vg["name"]:
            return failure("conflict", f"node {vg['node']} already has a volume group {vg['name']}")
    members = []
    for pv_id in vg["pv_ids"]:
        pv = store.get(PVS, pv_id)
        if pv is None:
            return failure("not_found", f"no physical volume {pv_id}")
        if pv["node"] != vg["node"]:
            return failure(
                "invalid", f"physical volume {pv_id} is on {pv['node']}, not {vg['node']}"
            )
        if pv["status"] != "ready":
            return failure("conflict", f"physical volume {pv_id} is {pv['status']}, not ready")
        if pv["vg_id"] is not None:
            return failure("conflict", f"physical volume {pv_id} already belongs to a volume group")
        members.append(pv)
    for pv in members:
        store.put(PVS, pv["id"], {**pv, "vg_id": vg["id"], "updated_at": vg["created_at"]})
    return {"ok": True, "vg": store.put(VGS, vg["id"], vg)}


def update(
    store: Store,
    table: str,
    record_id: str,
    fields: dict[str, Any],
    expect_status: str | None = None,
) -> dict[str, Any]:
    """Change fields; with `expect_status`, only from that status (how an agent claims
    work). A group goes `deleting` only while it holds no volume."""
    old = store.get(table, record_id)
    if old is None:
        return failure(
            "not_found", f"no {'volume group' if table == VGS else 'physical volume'} {record_id}"
        )
    if expect_status is not None and old["status"] != expect_status:
        return failure("conflict", f"{record_id} is {old['status']}, not {expect_status}")
    if table == VGS and fields.get("status") == "deleting":
        held = logical_volumes(store, old)
        if held:
            names = ", ".join(sorted(v["name"] for v in held))
            return failure("conflict", f"volume group {old['name']} still holds volumes: {names}")
    if table == PVS and fields.get("status") == "deleting" and old["vg_id"] is not None:
        group = get(store, VGS, old["vg_id"])
        name = group["name"] if group else old["vg_id"]
        return failure(
            "conflict",
            f"physical volume {old['device']} belongs to volume group {name}: remove that first",
        )
    return {"ok": True, table[:-1]: store.put(table, record_id, {**old, **fields})}


def delete(store: Store, table: str, record_id: str) -> dict[str, Any]:
    old = store.get(table, record_id)
    if old is None:
        return failure("not_found", f"no record {record_id} in {table}")
    if table == VGS:
        for pv_id in old["pv_ids"]:
            pv = store.get(PVS, pv_id)
            if pv is not None and pv["vg_id"] == record_id:
                store.put(PVS, pv_id, {**pv, "vg_id": None})
    elif old["vg_id"] is not None and get(store, VGS, old["vg_id"]) is not None:
        return failure(
            "conflict", f"physical volume {old['device']} still belongs to a volume group"
        )
    store.delete(table, record_id)
    return {"ok": True}
