"""Physical volumes, volume groups and logical volumes of `lvm` block services: the API
verbs (`block pv|vg|lv ...`) and the agent that makes them true (`LvmAgent`).

As for volumes, handlers only validate and record (`pending`, `deleting`); the agent of
the node that owns the service claims the record (`pending` -> `creating`), runs lvm2 and
records the outcome (`ready` with sizes, or `failed` with lvm2's message; a removal lvm2
refuses leaves it `ready` with a `last_error`, cleared by the next removal request). A
record found `creating` at start was interrupted: it is finished if lvm2 shows the work
done, tried again otherwise. A logical volume is a volume whose pool is the group's name,
so it is made, resized and removed by the volume agent like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.block.lvm import LvmHost, check_device_path
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import Action, GiveUp, Reconciler, claim, patch, run_blocking
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import lvm, services, volumes
from symphonyd.state.lookup import resolve_one
from symphonyd.validation import check_name

log = logging.getLogger("symphonyd.block.lvm")


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
        return dict(resolve_one(found, ref, KINDS[table].what))

    def _lvm_service(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = [
                dict(s)
                for s in services.of_type(self.cluster.store, "block")
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
            "last_error": None,  # {action: "remove", message, at} of a refused removal
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
            "last_error": None,  # {action: "remove", message, at} of a refused removal
            "size": None,
            "free": None,
            "created_at": now,
            "updated_at": now,
        }
        result = await self.cluster.propose_ok(Entry(EntryType.VG_CREATE, {"vg": record}))
        return dict(result["vg"])

    async def remove(self, table: str, ref: str) -> dict[str, Any]:
        record = self.resolve(table, ref)
        kind = KINDS[table]
        what, update, delete = kind.what, kind.update, kind.delete
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
                        "last_error": None,
                        "updated_at": now_rfc3339(),
                    },
                },
            )
        )
        log.info("%s %s marked for removal", what, record["id"], extra={"resource": record["id"]})
        return self.resolve(table, record["id"])

    # -- sizes ------------------------------------------------------------------------------

    def mine(self, my_services: Mapping[str, dict[str, Any]]) -> list[tuple[str, Any, LvmHost]]:
        """(table, record, host LVM) of this node's physical volumes and groups."""
        found = []
        for table in (lvm.PVS, lvm.VGS):
            for record in self.records(table):
                service = my_services.get(record["service_id"])
                if record["node"] == self.node and service and service["driver"] == "lvm":
                    found.append((table, record, host_of(service)))
        return found

    async def refresh(self, my_services: dict[str, dict[str, Any]]) -> None:
        """Keep the sizes of ready records current (with the services' health reports)."""
        for table, record, host in self.mine(my_services):
            if record["status"] == "ready":
                await self._refresh(table, record, host)

    async def _refresh(self, table: str, record: dict[str, Any], host: LvmHost) -> None:
        """Keep sizes current (they change as logical volumes come and go)."""
        kind = KINDS[table]
        found = await asyncio.to_thread(kind.find, host, record)
        update = kind.update
        if found is None:
            if record["status_message"] != GONE:
                await patch(self.cluster, update, record["id"], status_message=GONE)
            return
        if (found.size, found.free) != (record["size"], record["free"]):
            # Only the message this refresh wrote is cleared: a "not removed: ..." of a
            # refused removal stays (the sizes move when an LV appears behind our back).
            back = {"status_message": ""} if record["status_message"] == GONE else {}
            await patch(
                self.cluster, update, record["id"], size=found.size, free=found.free, **back
            )


GONE = "gone from the host: lvm2 no longer lists it"


def host_of(service: Mapping[str, Any]) -> LvmHost:
    return LvmHost(bool(service["options"].get("metadata_only")))


def decide_lvm(record: Mapping[str, Any]) -> list[Action]:
    """What is left to do for one physical volume or volume group record."""
    status = record["status"]
    if status == "deleting":
        return [Action("remove")]
    if status == "pending":
        return [Action("claim"), Action("make")]
    if status == "creating":  # no worker has it: interrupted; finished or done again
        return [Action("make")]
    return []


@dataclass(frozen=True)
class OwnedLvm:
    table: str  # lvm.PVS or lvm.VGS
    record: dict[str, Any]
    host: LvmHost


class LvmAgent(Reconciler[OwnedLvm]):
    """Makes this node's physical volume and volume group records true with lvm2."""

    name = "lvm"
    tables = frozenset({"pvs", "vgs", "services"})
    concurrency = 1  # lvm2 takes a global lock: one command at a time anyway

    def __init__(self, cluster: Cluster, node: str, resources: LvmResources) -> None:
        super().__init__(cluster)
        self.node = node
        self.resources = resources

    def wanted(self) -> dict[str, OwnedLvm]:
        with self.cluster.store.lock:
            my_services = {
                s["id"]: dict(s)
                for s in services.of_type(self.cluster.store, "block")
                if s["node"] == self.node
            }
        return {
            f"{table}/{record['id']}": OwnedLvm(table, record, host)
            for table, record, host in self.resources.mine(my_services)
        }

    def decide(self, record: OwnedLvm, observed: Any) -> list[Action]:
        return decide_lvm(record.record)

    async def act(self, record: OwnedLvm, action: Action) -> None:
        kind, rid = KINDS[record.table], record.record["id"]
        if action.verb == "claim":
            await claim(self.cluster, record.table, rid, self.node)
        elif action.verb == "remove":
            try:
                await run_blocking(kind.remove, record.host, record.record)
            except SymphonyError as exc:
                await patch(
                    self.cluster,
                    kind.update,
                    rid,
                    status="ready",
                    status_message=f"not removed: {exc.message}",
                    last_error=volumes.change_error("remove", exc.message, now_rfc3339()),
                )
                return
            await self.cluster.propose_ok(Entry(kind.delete, {"id": rid}), idempotent=True)
            log.info("%s %s removed", kind.what, rid, extra={"resource": rid})
        elif action.verb == "make":
            try:
                made = await run_blocking(kind.make, self.resources, record.host, record.record)
            except SymphonyError as exc:
                raise GiveUp(exc.message) from None
            await patch(
                self.cluster,
                kind.update,
                rid,
                status="ready",
                status_message="",
                size=made.size,
                free=made.free,
            )
        else:
            raise GiveUp(f"unknown action {action}")

    async def give_up(self, record: OwnedLvm, reason: str) -> None:
        kind, rid = KINDS[record.table], record.record["id"]
        await patch(self.cluster, kind.update, rid, status="failed", status_message=reason)
        log.warning("%s %s failed: %s", kind.what, rid, reason)


def _make_pv(resources: LvmResources, host: LvmHost, record: Mapping[str, Any]) -> Any:
    device = record["device"]
    existing = host.physical_volumes().get(device)  # interrupted after pvcreate?
    return existing if existing is not None and not existing.vg else host.create_pv(device)


def _make_vg(resources: LvmResources, host: LvmHost, record: Mapping[str, Any]) -> Any:
    devices = [p["device"] for p in resources.records(lvm.PVS) if p["id"] in record["pv_ids"]]
    existing = host.volume_groups().get(record["name"])
    if existing is not None:  # interrupted after vgcreate: ours if it has our devices
        pvs = host.physical_volumes()
        if devices and all(d in pvs and pvs[d].vg == record["name"] for d in devices):
            return existing
    return host.create_vg(record["name"], devices)


@dataclass(frozen=True)
class Kind:
    """What differs between physical volumes and volume groups."""

    what: str
    update: EntryType
    delete: EntryType
    make: Callable[[LvmResources, LvmHost, Mapping[str, Any]], Any]
    remove: Callable[[LvmHost, Mapping[str, Any]], None]
    find: Callable[[LvmHost, Mapping[str, Any]], Any]  # what lvm2 lists for it, or None


KINDS = {
    lvm.PVS: Kind(
        "physical volume",
        EntryType.PV_UPDATE,
        EntryType.PV_DELETE,
        _make_pv,
        lambda host, record: host.remove_pv(record["device"]),
        lambda host, record: host.physical_volumes().get(record["device"]),
    ),
    lvm.VGS: Kind(
        "volume group",
        EntryType.VG_UPDATE,
        EntryType.VG_DELETE,
        _make_vg,
        lambda host, record: host.remove_vg(record["name"]),
        lambda host, record: host.volume_groups().get(record["name"]),
    ),
}
