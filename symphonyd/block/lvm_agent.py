"""Physical volumes, volume groups and logical volumes of `lvm` block services: the API
verbs (`block pv|vg|lv ...`) and the part of the block agent that converges them.

As for volumes, handlers only validate and record (`pending`, `deleting`); the agent of
the node that owns the service claims the record (`pending` -> `creating`), runs lvm2 and
records the outcome (`ready` with sizes, or `failed` with lvm2's message). A record found
`creating` at start was interrupted: it is finished if lvm2 shows the work done, tried
again otherwise. A logical volume is a volume whose pool is the group's name, so it is
made, resized and removed by the volume agent like any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from symphonyd.block.lvm import LvmHost, check_device_path
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import lvm, services
from symphonyd.validation import check_name

log = logging.getLogger("symphonyd.block.lvm")

KINDS = {
    lvm.PVS: ("physical volume", EntryType.PV_UPDATE, EntryType.PV_DELETE),
    lvm.VGS: ("volume group", EntryType.VG_UPDATE, EntryType.VG_DELETE),
}


class LvmResources:
    def __init__(self, cluster: Cluster, node: str) -> None:
        self.cluster = cluster
        self.node = node

    # -- reading ------------------------------------------------------------------------------

    def records(self, table: str) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [dict(r) for r in lvm.all_records(self.cluster.store, table)]

    def resolve(self, table: str, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = lvm.find(self.cluster.store, table, ref)
        what = KINDS[table][0]
        if not found:
            raise NotFound(f"no {what} {ref!r}")
        if len(found) > 1:
            raise Conflict(f"{ref!r} matches several {what}s; use the id")
        return dict(found[0])

    def _lvm_service(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = [
                dict(s)
                for s in services.all_services(self.cluster.store)
                if s["id"] == ref or (len(ref) >= 4 and s["id"].startswith(ref))
            ]
        if len(found) != 1:
            raise NotFound(f"no service {ref!r}")
        if found[0]["driver"] != "lvm":
            raise Invalid(
                f"service {found[0]['id']} uses the {found[0]['driver']} driver; physical "
                "volumes belong to an lvm service"
            )
        return found[0]

    # -- API verbs ----------------------------------------------------------------------------

    async def create_pv(self, device: object, service_ref: object) -> dict[str, Any]:
        device = check_device_path(device)
        if not isinstance(service_ref, str) or not service_ref:
            raise Invalid("a physical volume needs the id of an lvm service")
        service = self._lvm_service(service_ref)
        now = now_rfc3339()
        record = {
            "id": new_id(),
            "node": service["node"],
            "service_id": service["id"],
            "device": device,
            "status": "pending",
            "status_message": "",
            "size": None,
            "free": None,
            "vg_id": None,
            "created_at": now,
            "updated_at": now,
        }
        result = await self.cluster.propose_ok(Entry(EntryType.PV_CREATE, {"pv": record}))
        return dict(result["pv"])

    async def create_vg(self, pv_ref: str, name: object) -> dict[str, Any]:
        pv = self.resolve(lvm.PVS, pv_ref)
        with self.cluster.store.lock:
            service = services.get(self.cluster.store, pv["service_id"])
        if service is None:
            raise NotFound(f"the service of physical volume {pv['id']} is gone")
        group_name = check_name(
            name if name is not None else service["pool"], what="volume group name"
        )
        if pv["status"] != "ready":
            raise Conflict(f"physical volume {pv['device']} is {pv['status']}, not ready")
        now = now_rfc3339()
        record = {
            "id": new_id(),
            "name": group_name,
            "node": pv["node"],
            "service_id": pv["service_id"],
            "pv_ids": [pv["id"]],
            "status": "pending",
            "status_message": "",
            "size": None,
            "free": None,
            "created_at": now,
            "updated_at": now,
        }
        result = await self.cluster.propose_ok(Entry(EntryType.VG_CREATE, {"vg": record}))
        return dict(result["vg"])

    async def remove(self, table: str, ref: str) -> dict[str, Any]:
        record = self.resolve(table, ref)
        what, update, delete = KINDS[table]
        if record["status"] in ("pending", "failed"):
            await self.cluster.propose_ok(Entry(delete, {"id": record["id"]}))
            return {"deleted": record["id"]}
        await self.cluster.propose_ok(
            Entry(
                update,
                {
                    "id": record["id"],
                    "fields": {
                        "status": "deleting",
                        "status_message": "",
                        "updated_at": now_rfc3339(),
                    },
                },
            )
        )
        log.info("%s %s marked for removal", what, record["id"], extra={"resource": record["id"]})
        return self.resolve(table, record["id"])

    # -- the agent ----------------------------------------------------------------------------

    async def _set(
        self, table: str, record_id: str, expect: str | None = None, **fields: Any
    ) -> None:
        fields["updated_at"] = now_rfc3339()
        body: dict[str, Any] = {"id": record_id, "fields": fields}
        if expect is not None:
            body["expect_status"] = expect
        await self.cluster.propose_ok(Entry(KINDS[table][1], body), idempotent=expect is None)

    def _mine(self, my_services: dict[str, dict[str, Any]]) -> list[tuple[str, Any, LvmHost]]:
        """(table, record, host LVM) of this node's physical volumes and groups."""
        found = []
        for table in (lvm.PVS, lvm.VGS):
            for record in self.records(table):
                service = my_services.get(record["service_id"])
                if record["node"] == self.node and service and service["driver"] == "lvm":
                    metadata_only = bool(service["options"].get("metadata_only"))
                    found.append((table, record, LvmHost(metadata_only)))
        return found

    async def converge(self, my_services: dict[str, dict[str, Any]]) -> None:
        """Do what this node's physical volume and volume group records ask for."""
        for table, record, host in self._mine(my_services):
            if record["status"] in ("ready", "failed"):
                continue
            try:
                await self._converge_one(table, record, host)
            except SymphonyError as exc:
                log.warning("%s %s: %s", KINDS[table][0], record["id"], exc.message)

    async def refresh(self, my_services: dict[str, dict[str, Any]]) -> None:
        """Keep the sizes of ready records current (with the services' health reports)."""
        for table, record, host in self._mine(my_services):
            if record["status"] == "ready":
                await self._refresh(table, record, host)

    async def _converge_one(self, table: str, record: dict[str, Any], host: LvmHost) -> None:
        rid, status = record["id"], record["status"]
        if status == "deleting":
            try:
                if table == lvm.PVS:
                    await asyncio.to_thread(host.remove_pv, record["device"])
                else:
                    await asyncio.to_thread(host.remove_vg, record["name"])
            except SymphonyError as exc:
                await self._set(
                    table, rid, status="ready", status_message=f"not removed: {exc.message}"
                )
                return
            await self.cluster.propose_ok(Entry(KINDS[table][2], {"id": rid}), idempotent=True)
            log.info("%s %s removed", KINDS[table][0], rid, extra={"resource": rid})
            return
        if status == "pending":
            try:
                await self._set(table, rid, expect="pending", status="creating")
            except Conflict:
                return
        elif status != "creating":
            return
        try:
            if table == lvm.PVS:
                made = await asyncio.to_thread(self._make_pv, host, record["device"])
                fields = {"size": made.size, "free": made.free}
            else:
                group = await asyncio.to_thread(self._make_vg, host, record)
                fields = {"size": group.size, "free": group.free}
        except SymphonyError as exc:
            await self._set(table, rid, status="failed", status_message=exc.message)
            log.warning("%s %s failed: %s", KINDS[table][0], rid, exc.message)
            return
        await self._set(table, rid, status="ready", status_message="", **fields)

    def _make_pv(self, host: LvmHost, device: str) -> Any:
        existing = host.physical_volumes().get(device)  # interrupted after pvcreate?
        return existing if existing is not None and not existing.vg else host.create_pv(device)

    def _make_vg(self, host: LvmHost, record: dict[str, Any]) -> Any:
        with self.cluster.store.lock:
            devices = [
                p["device"]
                for p in lvm.all_records(self.cluster.store, lvm.PVS)
                if p["id"] in record["pv_ids"]
            ]
        existing = host.volume_groups().get(record["name"])
        if existing is not None:  # interrupted after vgcreate: ours if it has our devices
            pvs = host.physical_volumes()
            if devices and all(d in pvs and pvs[d].vg == record["name"] for d in devices):
                return existing
        return host.create_vg(record["name"], devices)

    async def _refresh(self, table: str, record: dict[str, Any], host: LvmHost) -> None:
        """Keep sizes current (they change as logical volumes come and go)."""
        found: Any
        if table == lvm.PVS:
            found = (await asyncio.to_thread(host.physical_volumes)).get(record["device"])
        else:
            found = (await asyncio.to_thread(host.volume_groups)).get(record["name"])
        if found is None:
            message = "gone from the host: lvm2 no longer lists it"
            if record["status_message"] != message:
                await self._set(table, record["id"], status_message=message)
            return
        if (found.size, found.free) != (record["size"], record["free"]):
            await self._set(
                table, record["id"], size=found.size, free=found.free, status_message=""
            )
