"""The block service of a node: its request verbs (enable a service, create, resize,
snapshot and delete volumes), the drivers of its pools, and its health reports.

Handlers only validate and record desired state (`pending`, a larger `size`, a snapshot
name, `deleting`); the leader places new volumes (`scheduler.py`), and the volume agent of
the owning node (`block/agent.py`) makes the records true. Nothing here calls a driver to
change a volume. Each change request clears `last_error` in the patch that records it, so
a waiting client knows that an error it sees afterwards is about the state it asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from symphonyd import scheduler
from symphonyd.block.driver import (
    BlockDriver,
    NotSupported,
    capabilities,
    make_driver,
)
from symphonyd.block.lvm_agent import LvmResources
from symphonyd.errors import Conflict, Invalid, SymphonyError
from symphonyd.image.service import ImageService
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import patch
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import instances, lvm, services, volumes
from symphonyd.state.lookup import resolve_one
from symphonyd.validation import check_name, parse_size

log = logging.getLogger("symphonyd.block")

HEALTH_EVERY = 10.0


CAPACITY_SLACK = 0.01  # free space moving less than this share of the total is not written
CAPACITY_SLACK_MIN = 64 << 20


def health_changed(
    service: dict[str, Any], ok: bool, message: str, capacity: dict[str, int] | None
) -> bool:
    """Whether a health check is worth a log entry: the health or message changed, the
    capacity appeared or went, or the free space moved by more than CAPACITY_SLACK of the
    total (at least CAPACITY_SLACK_MIN). Free space on a file system shared with the host
    moves with every write of anything there; writing each move would be a heartbeat."""
    old_health, old_capacity = service.get("health") or {}, service.get("capacity")
    if old_health.get("ok") != ok or old_health.get("message") != message:
        return True
    if (old_capacity is None) != (capacity is None):
        return True
    if capacity is None or old_capacity is None:
        return False
    if capacity["total"] != old_capacity.get("total"):
        return True
    slack = max(int(capacity["total"] * CAPACITY_SLACK), CAPACITY_SLACK_MIN)
    return abs(capacity["free"] - int(old_capacity.get("free", 0))) > slack


class PoolDrivers:
    """The drivers of this node's pools, one per (service, pool), made on first use and
    shared by the verbs, the health reports and the volume agent."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.drivers: dict[tuple[str, str], BlockDriver] = {}

    def get(self, service: dict[str, Any], pool: str | None = None) -> BlockDriver:
        """The driver of one pool of a service (its own pool unless told otherwise)."""
        key = (service["id"], pool or service["pool"])
        driver = self.drivers.get(key)
        if driver is None:
            driver = make_driver(
                service["driver"], key[1], self.data_dir, **service.get("options", {})
            )
            self.drivers[key] = driver
        return driver


class BlockService:
    def __init__(
        self,
        cluster: Cluster,
        images_service: ImageService,
        node: str,
        data_dir: str,
        defaults: dict[str, Any] | None = None,
        leader_view: scheduler.LeaderView | None = None,
    ) -> None:
        self.cluster = cluster
        self.leader_view = leader_view
        self.images = images_service
        self.node = node
        self.data_dir = data_dir
        self.defaults = defaults or {}  # the node's `[block]` settings
        self.drivers = PoolDrivers(data_dir)
        self.lvm = LvmResources(cluster, node)

    # -- health ---------------------------------------------------------------------------

    async def report_health(self) -> None:
        """Check this node's services; write what changed (`health_changed`), nothing else:
        an idle cluster's log does not grow with heartbeats."""
        with self.cluster.store.lock:
            mine = [
                dict(s)
                for s in services.of_type(self.cluster.store, "block")
                if s["node"] == self.node
            ]
        for service in mine:
            driver = self.drivers.get(service)
            health = await asyncio.to_thread(driver.check)
            pool = await asyncio.to_thread(driver.pool) if health.ok else None
            capacity = {"total": pool.total, "free": pool.free} if pool else None
            if not health_changed(service, health.ok, health.message, capacity):
                continue
            fields = {
                "health": {"ok": health.ok, "message": health.message, "checked_at": now_rfc3339()},
                "capacity": capacity,
            }
            await self.cluster.propose_ok(
                Entry(EntryType.SERVICE_UPDATE, {"id": service["id"], "fields": fields}),
                idempotent=True,
            )
        await self.lvm.refresh({s["id"]: s for s in mine})

    # -- volumes (API verbs) ----------------------------------------------------------------

    def resolve(self, ref: str, logical: bool = False) -> dict[str, Any]:
        """A volume by id, name or unique id prefix; with `logical`, only an LV (a volume
        of an lvm service)."""
        with self.cluster.store.lock:
            found = volumes.find(self.cluster.store, ref)
            if logical:
                found = [v for v in found if self._on_lvm(v)]
        return dict(resolve_one(found, ref, "logical volume" if logical else "volume"))

    def _on_lvm(self, volume: Any) -> bool:
        service = services.get(self.cluster.store, volume["service_id"] or "")
        return service is not None and service["driver"] == "lvm"

    def records(self) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [dict(v) for v in volumes.all_volumes(self.cluster.store)]

    def logical_volumes(self) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [dict(v) for v in volumes.all_volumes(self.cluster.store) if self._on_lvm(v)]

    async def create(
        self, name: object, size: object, image_ref: str | None, node: str | None, pool: str | None
    ) -> dict[str, Any]:
        name_text = check_name(name, what="volume name")
        size_bytes = parse_size(size)
        image = self.images.resolve(image_ref) if image_ref else None
        if image is not None and image["status"] != "ready":
            raise Conflict(f"image {image['id']} is {image['status']}, not ready")
        if image is not None and (image.get("virtual_size") or 0) > size_bytes:
            raise Invalid(
                f"the image needs {image['virtual_size']} bytes; the volume has {size_bytes}"
            )
        self.cluster.require_schema(EntryType.VOLUME_PLACE)
        reachable = await scheduler.placement_nodes(self.cluster, self.node, self.leader_view)
        with self.cluster.store.lock:  # refuse now what the scheduler could not place
            scheduler.choose(
                self.cluster.store,
                reachable,
                size_bytes,
                image["id"] if image else None,
                node,
                pool,
            )
        record = self._new_volume(name_text, size_bytes, image["id"] if image else None)
        record["placement"] = {"node": node, "pool": pool}
        result = await self.cluster.propose_ok(Entry(EntryType.VOLUME_CREATE, {"volume": record}))
        return dict(result["volume"])

    def _new_volume(self, name: str, size: int, image_id: str | None) -> dict[str, Any]:
        now = now_rfc3339()
        return {
            "id": new_id(),
            "name": name,
            "node": None,
            "placement": None,
            "service_id": None,
            "pool": None,
            "size": size,
            "image_id": image_id,
            "overlay": False,
            "status": "pending",
            "status_message": "",
            "last_error": None,  # {action, message, at} of a change that failed (agent)
            "format": None,
            "allocated": None,
            "actual_size": None,
            "snapshots": [],
            "snapshots_done": [],
            "progress": None,  # while creating: {stage, done, total} of the image work
            "created_at": now,
            "updated_at": now,
        }

    async def create_lv(self, size: object, vg_ref: str, name: object) -> dict[str, Any]:
        """A logical volume in a given volume group: a volume placed there by the user."""
        size_bytes = parse_size(size)
        group = self.lvm.resolve(lvm.VGS, vg_ref)
        if group["status"] != "ready":
            raise Conflict(f"volume group {group['name']} is {group['status']}, not ready")
        if group["free"] is not None and size_bytes > group["free"]:
            raise Invalid(
                f"volume group {group['name']} has {group['free']} bytes free; {size_bytes} asked"
            )
        record = self._new_volume("", size_bytes, None)
        record["name"] = check_name(
            name if name is not None else f"lv-{record['id'][:8]}", what="volume name"
        )
        record.update(node=group["node"], service_id=group["service_id"], pool=group["name"])
        result = await self.cluster.propose_ok(Entry(EntryType.VOLUME_CREATE, {"volume": record}))
        return dict(result["volume"])

    async def _set(self, volume_id: str, **fields: Any) -> None:
        await patch(self.cluster, EntryType.VOLUME_UPDATE, volume_id, **fields)

    async def resize(self, ref: str, size: object) -> dict[str, Any]:
        volume = self.resolve(ref)
        size_bytes = parse_size(size)
        if size_bytes < volume["size"]:
            raise Invalid(f"volumes only grow: {volume['size']} -> {size_bytes} bytes refused")
        await self._set(volume["id"], size=size_bytes, last_error=None)
        return self.resolve(volume["id"])

    async def snapshot(self, ref: str, name: str | None) -> dict[str, Any]:
        volume = self.resolve(ref)
        snap = check_name(name or f"snap-{len(volume['snapshots']) + 1}", what="snapshot name")
        if snap in volume["snapshots"]:
            raise Conflict(f"volume {volume['name']} already has a snapshot {snap!r}")
        with self.cluster.store.lock:
            service = services.get(self.cluster.store, volume["service_id"] or "")
        if service is not None:
            able, why = capabilities(service["driver"], service.get("options", {}))
            if not able.snapshots:
                raise NotSupported(f"volume {volume['name']}: {why}")
        await self._set(volume["id"], snapshots=[*volume["snapshots"], snap], last_error=None)
        return self.resolve(volume["id"])

    async def delete(self, ref: str) -> dict[str, Any]:
        volume = self.resolve(ref)
        if volume["status"] in ("pending", "failed"):
            await self.cluster.propose_ok(Entry(EntryType.VOLUME_DELETE, {"id": volume["id"]}))
            return {"deleted": volume["id"], "name": volume["name"]}
        await self._set(volume["id"], status="deleting", status_message="", last_error=None)
        return self.resolve(volume["id"])

    async def readable_path(self, ref: str) -> tuple[dict[str, Any], str]:
        """The file (or device) of a volume of this node that may be read whole: ready, and
        no instance running on it (a copy of a disk in use would not be consistent)."""
        volume = self.resolve(ref)
        if volume["node"] != self.node:
            raise Conflict(f"volume {volume['name']} is on node {volume['node']}, not here")
        if volume["status"] != "ready":
            raise Conflict(f"volume {volume['name']} is {volume['status']}, not ready")
        with self.cluster.store.lock:
            store = self.cluster.store
            busy = [
                i["name"]
                for i in instances.using_volume(store, volume["id"])
                if i["status"] not in ("stopped", "failed")
            ]
            service = services.get(store, volume["service_id"] or "")
        if busy:
            raise Conflict(f"volume {volume['name']} is in use by running instance {busy[0]}")
        if service is None:
            raise Conflict(f"volume {volume['name']} has no service")
        driver = self.drivers.get(dict(service), volume["pool"])
        found = (await asyncio.to_thread(driver.volumes)).get(volume["id"])
        if found is None:
            raise Conflict(f"volume {volume['name']} is not in its pool")
        return volume, found.path

    async def digest(self, ref: str) -> dict[str, Any]:
        """SHA-256 and size of a volume of this node, read whole (for a verified copy)."""
        volume, path = await self.readable_path(ref)
        sha256, size = await asyncio.to_thread(_hash_file, path)
        return {"id": volume["id"], "sha256": sha256, "size": size, "format": volume["format"]}

    def _footprint(self) -> tuple[Any, ...]:
        """What this node's pools hold, as the store says: when it changes (a volume made,
        grown or removed, a group made), the capacity is reported again at once, so the
        scheduler never works from a stale free space for long."""
        with self.cluster.store.lock:
            store = self.cluster.store
            mine = sorted(
                (v["id"], v["status"], v["actual_size"])
                for v in volumes.all_volumes(store)
                if v["node"] == self.node
            )
            groups = sorted(
                (g["id"], g["status"])
                for g in lvm.all_records(store, lvm.VGS)
                if g["node"] == self.node
            )
        return (tuple(mine), tuple(groups))

    async def run_health(self) -> None:
        """Report the health and capacity of this node's services every HEALTH_EVERY
        seconds, and at once when what its pools hold changes (so the scheduler never
        works from a stale free space for long)."""
        last_health, reported = 0.0, None
        loop = asyncio.get_running_loop()
        while True:
            seen = self.cluster.store.revision  # before reading: later changes wake us
            ok = True
            footprint = self._footprint()
            if loop.time() - last_health >= HEALTH_EVERY or footprint != reported:
                try:
                    await self.report_health()
                    last_health, reported = loop.time(), footprint
                except (SymphonyError, OSError) as exc:
                    ok = False
                    log.warning("block health: %s", exc)
            await self.cluster.wait_for_tables(
                {"volumes", "services", "vgs"}, seen, HEALTH_EVERY if ok else 1.0
            )


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
