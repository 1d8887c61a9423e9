"""The block service of a node: its API-facing verbs (enable a service, create, resize,
snapshot and delete volumes) and the agent that converges this node's volumes.

Decide, then act: handlers only validate, place and record desired state (`pending`,
a larger `size`, a snapshot name, `deleting`); the agent compares the volumes assigned to
this node with what its driver reports and does the difference, level-triggered, so a
node that was down or restarted catches up by itself. Work is claimed through the log
(`pending` -> `creating` only if still `pending`), so two nodes never act on one volume.
A volume found `creating` at start was interrupted: its leftovers are removed and it is
created again. Driver calls run in threads; outcomes go back through the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from symphonyd import metrics, scheduler
from symphonyd.block.driver import (
    BlockDriver,
    NoSuchVolume,
    NotSupported,
    capabilities,
    check_options,
    make_driver,
)
from symphonyd.block.lvm_agent import LvmResources
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError
from symphonyd.image.service import ImageService
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import lvm, services, volumes
from symphonyd.validation import check_name

log = logging.getLogger("symphonyd.block")

SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
UNITS = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 1 << 50
HEALTH_EVERY = 10.0
ORPHANS_EVERY = 60.0  # a full scan of the pools for volumes without a record
PROGRESS_EVERY = 1.0  # seconds between progress entries while a volume is made


def parse_size(value: object) -> int:
    """'10G', '512M', '1T', a bare number of GiB (as the original CLI), or bytes as int."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := SIZE_RE.match(value)):
        number, unit = float(match.group(1)), match.group(2).upper()
        if match.group(3) and match.group(3).upper() == "B" and not unit:
            size = int(number)  # "100B": bytes
        else:
            size = int(number * UNITS[unit])
    else:
        raise Invalid(f"invalid size {value!r}: use e.g. 512M, 10G, 1T, or a number of GiB")
    if size <= 0:
        raise Invalid(f"size must be above zero, not {value!r}")
    if size > MAX_SIZE:
        raise Invalid(f"size {value!r} is larger than any pool")
    return size


class CreateProgress:
    """How far the making of one volume is: its stage and bytes, fed by the image fetch
    (read through `source`) and by the driver's copy (through `copied`, from its thread)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.total = 0
        self.done = 0
        self.source: Callable[[], int] | None = None

    def copied(self, done: int) -> bool:
        self.done = done
        return False  # never cancel

    def snapshot(self) -> dict[str, Any]:
        done = self.source() if self.source is not None else self.done
        return {"stage": self.stage, "done": done, "total": self.total}


class BlockService:
    def __init__(
        self,
        cluster: Cluster,
        images_service: ImageService,
        node: str,
        data_dir: str,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.images = images_service
        self.node = node
        self.data_dir = data_dir
        self.defaults = defaults or {}  # the node's `[block]` settings
        self.drivers: dict[tuple[str, str], BlockDriver] = {}
        self.busy: set[str] = set()
        self._scanned_ids: set[str] | None = None  # this node's volumes at the last scan
        self._scanned_at = 0.0
        self.lvm = LvmResources(cluster, node)
        self.first_tried: dict[str, float] = {}  # the scheduler's patience, by volume

    # -- services -------------------------------------------------------------------------

    def _driver(self, service: dict[str, Any], pool: str | None = None) -> BlockDriver:
        """The driver of one pool of a service (its own pool unless told otherwise)."""
        key = (service["id"], pool or service["pool"])
        driver = self.drivers.get(key)
        if driver is None:
            driver = make_driver(
                service["driver"], key[1], self.data_dir, **service.get("options", {})
            )
            self.drivers[key] = driver
        return driver

    async def enable(
        self,
        kind: str | None,
        driver: str | None,
        pool: str | None,
        options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Enable a service on this node; what is not given comes from its `[block]`
        settings (the file driver and pool `default` unless configured)."""
        kind = kind or "block"
        if kind != "block":
            raise Invalid(f"unknown service type {kind!r} (this node offers: block)")
        driver = driver or str(self.defaults.get("driver", "file"))
        pool = pool or str(self.defaults.get("pool", "default"))
        if options is None:
            options = (
                dict(self.defaults.get("options", {}))
                if driver == self.defaults.get("driver", "file")
                else {}
            )
        options = check_options(driver, options)
        check_name(pool, what="pool name")
        # Try the driver before anything is recorded: a service that cannot work is refused.
        health = await asyncio.to_thread(
            lambda: make_driver(driver, pool, self.data_dir, **options).check()
        )
        if not health.ok:
            raise Invalid(f"the {driver} driver cannot work here: {health.message}")
        now = now_rfc3339()
        record: dict[str, Any] = {
            "id": new_id(),
            "node": self.node,
            "type": kind,
            "driver": driver,
            "pool": pool,
            "options": options,
            "health": None,
            "capacity": None,
            "created_at": now,
            "updated_at": now,
        }
        result = await self.cluster.propose_ok(Entry(EntryType.SERVICE_CREATE, {"service": record}))
        await self.report_health()
        return dict(result["service"])

    async def report_health(self) -> None:
        with self.cluster.store.lock:
            mine = [
                dict(s) for s in services.all_services(self.cluster.store) if s["node"] == self.node
            ]
        for service in mine:
            driver = self._driver(service)
            health = await asyncio.to_thread(driver.check)
            pool = await asyncio.to_thread(driver.pool) if health.ok else None
            fields = {
                "health": {"ok": health.ok, "message": health.message, "checked_at": now_rfc3339()},
                "capacity": {"total": pool.total, "free": pool.free} if pool else None,
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
        what = "logical volume" if logical else "volume"
        if not found:
            raise NotFound(f"no {what} {ref!r}")
        if len(found) > 1:
            raise Conflict(f"{ref!r} matches several {what}s; use the id")
        return dict(found[0])

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
        reachable = scheduler.reachable_nodes(self.cluster, self.node)
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

    async def _set(self, volume_id: str, expect: str | None = None, **fields: Any) -> None:
        fields["updated_at"] = now_rfc3339()
        body: dict[str, Any] = {"id": volume_id, "fields": fields}
        if expect is not None:
            body["expect_status"] = expect
        await self.cluster.propose_ok(
            Entry(EntryType.VOLUME_UPDATE, body), idempotent=expect is None
        )

    async def resize(self, ref: str, size: object) -> dict[str, Any]:
        volume = self.resolve(ref)
        size_bytes = parse_size(size)
        if size_bytes < volume["size"]:
            raise Invalid(f"volumes only grow: {volume['size']} -> {size_bytes} bytes refused")
        await self._set(volume["id"], size=size_bytes)
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
        await self._set(volume["id"], snapshots=[*volume["snapshots"], snap])
        return self.resolve(volume["id"])

    async def delete(self, ref: str) -> dict[str, Any]:
        volume = self.resolve(ref)
        if volume["status"] in ("pending", "failed"):
            await self.cluster.propose_ok(Entry(EntryType.VOLUME_DELETE, {"id": volume["id"]}))
            return {"deleted": volume["id"], "name": volume["name"]}
        await self._set(volume["id"], status="deleting", status_message="")
        return self.resolve(volume["id"])

    # -- the agent ---------------------------------------------------------------------------

    async def converge(self) -> None:
        """Compare this node's volumes with its drivers and do the difference."""
        store = self.cluster.store
        with store.lock:
            mine = [dict(v) for v in volumes.all_volumes(store) if v["node"] == self.node]
            my_services = {
                s["id"]: dict(s) for s in services.all_services(store) if s["node"] == self.node
            }
        for volume in mine:
            if volume["id"] in self.busy or volume["service_id"] not in my_services:
                continue
            self.busy.add(volume["id"])
            try:
                driver = self._driver(my_services[volume["service_id"]], volume["pool"])
                await self._converge_one(volume, driver)
            finally:
                self.busy.discard(volume["id"])
        await self.lvm.converge(my_services)
        # Listing every pool (`lvs`, `vgs`, a directory walk) on each wake-up is wasted work:
        # scan when one of this node's records went away, else once a minute (what a crash
        # may leave behind).
        ids = {v["id"] for v in mine}
        now = asyncio.get_running_loop().time()
        gone = self._scanned_ids is None or bool(self._scanned_ids - ids)
        if gone or now - self._scanned_at >= ORPHANS_EVERY:
            await self._remove_orphans(mine, my_services)
            self._scanned_ids, self._scanned_at = ids, now

    def _pools(self, mine: list[dict[str, Any]], my_services: dict[str, Any]) -> list[Any]:
        """Every (service, pool) of this node: each service's own pool, the pools its
        volumes are in, and for lvm its ready volume groups."""
        pools = {(sid, s["pool"]) for sid, s in my_services.items()}
        pools |= {(v["service_id"], v["pool"]) for v in mine if v["service_id"] in my_services}
        pools |= {
            (g["service_id"], g["name"])
            for g in self.lvm.records(lvm.VGS)
            if g["service_id"] in my_services and g["status"] == "ready"
        }
        return [(my_services[sid], pool) for sid, pool in sorted(pools)]

    async def _remove_orphans(
        self, mine: list[dict[str, Any]], my_services: dict[str, Any]
    ) -> None:
        """Volumes whose record is gone are removed, but only against a store known to be
        current (a restarted node may not have applied the latest entries yet)."""
        present: dict[tuple[str, str], set[str]] = {}
        for service, pool in self._pools(mine, my_services):
            found = await asyncio.to_thread(self._driver(service, pool).volumes)
            present[(service["id"], pool)] = set(found)
        if not any(ids - {v["id"] for v in mine} for ids in present.values()):
            return
        await self.cluster.barrier()
        with self.cluster.store.lock:
            wanted = {
                v["id"] for v in volumes.all_volumes(self.cluster.store) if v["node"] == self.node
            }
        for (service_id, pool), ids in present.items():
            driver = self._driver(my_services[service_id], pool)
            for orphan in ids - wanted:
                with contextlib.suppress(NoSuchVolume):
                    await asyncio.to_thread(driver.delete, orphan)
                log.info("removed volume %s (no record)", orphan, extra={"resource": orphan})

    async def _converge_one(self, volume: dict[str, Any], driver: BlockDriver) -> None:
        vid, status = volume["id"], volume["status"]
        if status == "deleting":
            with contextlib.suppress(NoSuchVolume):
                await asyncio.to_thread(driver.delete, vid)
            await self.cluster.propose_ok(
                Entry(EntryType.VOLUME_DELETE, {"id": vid}), idempotent=True
            )
            log.info("volume %s deleted", vid, extra={"resource": vid})
            return
        if status == "pending":
            try:
                await self._set(vid, expect="pending", status="creating")
            except Conflict:
                return  # someone else claimed it
            await self._create(volume, driver)
            return
        if status == "creating":  # interrupted (this node stopped): start again cleanly
            with contextlib.suppress(NoSuchVolume):
                await asyncio.to_thread(driver.delete, vid)
            await self._create(volume, driver)
            return
        if status != "ready":
            return
        actual = (await asyncio.to_thread(driver.volumes)).get(vid)
        if actual is None:
            await self._set(
                vid, status="failed", status_message="the volume disappeared from its pool"
            )
            return
        try:
            if volume["size"] > actual.size:
                actual = await asyncio.to_thread(driver.resize, vid, volume["size"])
                await self._set(
                    vid, allocated=actual.allocated, actual_size=actual.size, status_message=""
                )
            done = list(volume["snapshots_done"])
            for snap in volume["snapshots"]:
                if snap not in done:
                    try:
                        await asyncio.to_thread(driver.snapshot, vid, snap)
                    except NotSupported as exc:  # never possible here: drop it, say why
                        asked = [s for s in volume["snapshots"] if s != snap]
                        await self._set(
                            vid,
                            expect="ready",
                            snapshots=asked,
                            status_message=f"last change failed: snapshot {snap}: {exc.message}",
                        )
                        return
                    done.append(snap)
                    await self._set(vid, snapshots_done=done)
        except SymphonyError as exc:
            with contextlib.suppress(Conflict):  # deleted meanwhile: the message is moot
                await self._set(
                    vid, expect="ready", status_message=f"last change failed: {exc.message}"
                )

    async def _create(self, volume: dict[str, Any], driver: BlockDriver) -> None:
        vid = volume["id"]
        progress = CreateProgress()
        reporter = asyncio.create_task(self._report_progress(vid, progress))
        try:
            image_path = image_format = None
            if volume["image_id"]:
                record = self.images.resolve(volume["image_id"])
                progress.stage, progress.total = "fetching image", record["size"]
                progress.source = lambda: self.images.fetched_bytes.get(record["id"], 0)
                image = await self.images.ensure_local(volume["image_id"])
                image_path = self.images.files.path(image["fingerprint"])
                image_format = image["format"]
                progress.stage, progress.source = "copying image", None
            info = await asyncio.to_thread(
                driver.create,
                vid,
                volume["size"],
                image_path,
                image_format,
                volume["overlay"],
                progress.copied,
            )
        except SymphonyError as exc:
            await self._set(vid, status="failed", status_message=exc.message, progress=None)
            log.warning("volume %s failed: %s", vid, exc.message, extra={"resource": vid})
            return
        except OSError as exc:
            await self._set(vid, status="failed", status_message=str(exc), progress=None)
            return
        finally:
            reporter.cancel()
        await self._set(
            vid,
            status="ready",
            status_message="",
            progress=None,
            format=info.format,
            allocated=info.allocated,
            actual_size=info.size,
        )
        log.info("volume %s ready (%d bytes)", vid, info.size, extra={"resource": vid})

    async def _report_progress(self, volume_id: str, progress: CreateProgress) -> None:
        """Record how far a volume's image work is, once per PROGRESS_EVERY while it runs."""
        last = None
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            now = progress.snapshot()
            if now["stage"] is None or now == last:
                continue
            last = now
            body = {"id": volume_id, "fields": {"progress": now}, "expect_status": "creating"}
            with contextlib.suppress(SymphonyError):
                await self.cluster.propose(Entry(EntryType.VOLUME_UPDATE, body))

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

    async def run_agent(self) -> None:
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
                except (SymphonyError, OSError):
                    ok = False
            try:
                if self.cluster.is_leader() and await scheduler.schedule(
                    self.cluster, self.node, self.first_tried
                ):
                    ok = False  # a volume waits for a place: look again soon
                await self.converge()
            except (SymphonyError, OSError) as exc:
                ok = False
                metrics.RECONCILE_ERRORS.labels("block").inc()
                log.warning("block agent: %s", exc)
            except Exception:  # a bug must not stop this node's agent for good
                ok = False
                metrics.RECONCILE_ERRORS.labels("block").inc()
                log.exception("block agent: unexpected error")
            await self.cluster.wait_for_tables(
                {"volumes", "services", "images", "nodes", "pvs", "vgs"},
                seen,
                HEALTH_EVERY if ok else 1.0,
            )
