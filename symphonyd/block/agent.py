"""The volume agent of a node: makes this node's volume records true with its drivers.

Built on `reconcile.Reconciler`: `decide` compares one volume record with what its pool
reports and lists the actions (claim and create, re-create after an interruption, delete,
grow, snapshot); a worker per volume runs them, at most `concurrency` at once, so a long
image copy never holds up a delete, a resize or a new empty volume on the same node.
Work is claimed through the log (`pending` -> `creating` only if still `pending`), so two
nodes never act on one volume. A volume found `creating` with no worker was interrupted
(the node stopped): its leftovers are removed and it is made again. Volumes in a pool
without a record are removed, against a store known to be current. A volume with a
`source` is a copy of another node's volume (an instance's move, `block/transfer.py`).

A change of a ready volume that fails (a resize the pool has no room for, a snapshot)
sets the record's `last_error` (`{action, message, at}`, with a `status_message` for
people) and is tried again with the backoff; the next change that succeeds clears both.
The actions of a volume run in order and a failed one stops those after it, so the next
success is the failed change done (or one asked for since, whose request cleared it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.block.driver import BlockDriver, NoSuchVolume, NotSupported, VolumeInfo
from symphonyd.block.service import PoolDrivers
from symphonyd.block.transfer import VolumeSource, fetch_volume, transfer_dir
from symphonyd.errors import Conflict, SymphonyError
from symphonyd.image.service import ImageService
from symphonyd.progress import ProgressBoard
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import (
    Action,
    GiveUp,
    Progress,
    Reconciler,
    RetryLater,
    claim,
    patch,
    run_blocking,
)
from symphonyd.security import now_rfc3339
from symphonyd.state import lvm, services, volumes

__all__ = ["OwnedVolume", "VolumeAgent", "decide_volume"]

log = logging.getLogger("symphonyd.block")

ORPHANS_EVERY = 60.0  # a full scan of the pools for volumes without a record
FAILED_CHANGE = "last change failed: "  # the status_message of a failed resize or snapshot

PoolKey = tuple[str, str]  # (service id, pool)
Listings = Mapping[PoolKey, Mapping[str, VolumeInfo] | None]  # None: the pool did not answer


@dataclass(frozen=True)
class OwnedVolume:
    """A volume record of this node with the record of its service."""

    volume: dict[str, Any]
    service: dict[str, Any]

    @property
    def pool_key(self) -> PoolKey:
        return (self.service["id"], self.volume["pool"])


def decide_volume(
    volume: Mapping[str, Any], listing: Mapping[str, VolumeInfo] | None
) -> list[Action]:
    """What is left to do for one volume, given its pool's listing (None: not known)."""
    status = volume["status"]
    if status == "deleting":
        return [Action("delete")]
    if status == "pending":
        return [Action("claim"), Action("create")]
    if status == "creating":  # no worker has it: interrupted, start again cleanly
        return [Action("recreate")]
    if status != "ready" or listing is None:
        return []
    actual = listing.get(volume["id"])
    if actual is None:
        return [Action("lost")]
    actions = []
    if volume["size"] > actual.size:
        actions.append(Action("resize", volume["size"]))
    done = set(volume["snapshots_done"])
    actions += [Action("snapshot", snap) for snap in volume["snapshots"] if snap not in done]
    return actions


class VolumeAgent(Reconciler[OwnedVolume]):
    name = "block"
    tables = frozenset({"volumes", "services", "images", "nodes", "vgs"})
    concurrency = 4

    def __init__(
        self,
        cluster: Cluster,
        node: str,
        drivers: PoolDrivers,
        images: ImageService,
        board: ProgressBoard,
    ) -> None:
        super().__init__(cluster)
        self.node = node
        self.board = board  # how far each volume being made is (never in the log)
        self.drivers = drivers
        self.images = images
        self.sources = VolumeSource(cluster.store, images.caller)
        self._scanned_ids: set[str] | None = None  # this node's volumes at the last scan
        self._scanned_at = 0.0
        self._my_services: dict[str, dict[str, Any]] = {}

    # -- decide ---------------------------------------------------------------------------

    def wanted(self) -> dict[str, OwnedVolume]:
        store = self.cluster.store
        with store.lock:
            self._my_services = {
                s["id"]: dict(s) for s in services.of_type(store, "block") if s["node"] == self.node
            }
            return {
                v["id"]: OwnedVolume(dict(v), self._my_services[v["service_id"]])
                for v in volumes.all_volumes(store)
                if v["node"] == self.node and v["service_id"] in self._my_services
            }

    async def observe(self, wanted: Mapping[str, OwnedVolume]) -> Listings:
        """The listing of every pool holding a ready volume that no worker has."""
        keys = {
            owned.pool_key
            for vid, owned in wanted.items()
            if owned.volume["status"] == "ready" and vid not in self.workers
        }
        listings: dict[PoolKey, Mapping[str, VolumeInfo] | None] = {}
        for key in sorted(keys):
            driver = self.drivers.get(self._my_services[key[0]], key[1])
            try:
                listings[key] = await run_blocking(driver.volumes)
            except (SymphonyError, OSError) as exc:
                log.warning("block: cannot list pool %s: %s", key[1], exc)
                listings[key] = None
        return listings

    def decide(self, record: OwnedVolume, observed: Listings) -> list[Action]:
        return decide_volume(record.volume, observed.get(record.pool_key))

    # -- act --------------------------------------------------------------------------------

    async def act(self, record: OwnedVolume, action: Action) -> None:
        volume = record.volume
        vid = volume["id"]
        driver = self.drivers.get(record.service, volume["pool"])
        if action.verb == "delete":
            with contextlib.suppress(NoSuchVolume):
                await run_blocking(driver.delete, vid)
            await self.cluster.propose_ok(
                Entry(EntryType.VOLUME_DELETE, {"id": vid}), idempotent=True
            )
            log.info("volume %s deleted", vid, extra={"resource": vid})
        elif action.verb == "claim":
            await claim(self.cluster, "volumes", vid, self.node)
        elif action.verb in ("create", "recreate"):
            await self._create(record, leftovers=action.verb == "recreate")
        elif action.verb == "lost":
            await self._set(
                vid, status="failed", status_message="the volume disappeared from its pool"
            )
        elif action.verb == "resize":
            try:
                actual = await run_blocking(driver.resize, vid, action.arg)
            except SymphonyError as exc:
                await self._change_failed(vid, "resize", exc.message)
                raise RetryLater(f"resize: {exc.message}") from None
            await self._set(
                vid,
                allocated=actual.allocated,
                actual_size=actual.size,
                status_message="",
                last_error=None,
            )
        elif action.verb == "snapshot":
            await self._snapshot(record, str(action.arg))
        else:
            raise GiveUp(f"unknown action {action}")

    async def give_up(self, record: OwnedVolume, reason: str) -> None:
        """A volume that cannot be made goes `failed` with the reason (unless it was
        marked for deletion meanwhile: then the next pass deletes it)."""
        vid = record.volume["id"]
        with contextlib.suppress(Conflict):
            await self._set(
                vid, expect="creating", status="failed", status_message=reason, progress=None
            )
        log.warning("volume %s failed: %s", vid, reason, extra={"resource": vid})

    async def _set(self, volume_id: str, expect: str | None = None, **fields: Any) -> None:
        await patch(self.cluster, EntryType.VOLUME_UPDATE, volume_id, expect=expect, **fields)

    async def _change_failed(
        self, volume_id: str, action: str, message: str, **fields: Any
    ) -> None:
        """Record that `action` failed with `message` (unless the volume is no longer ready:
        deleted meanwhile, the failure is moot)."""
        error = volumes.change_error(action, message, now_rfc3339())
        with contextlib.suppress(Conflict):
            await self._set(
                volume_id,
                expect="ready",
                status_message=FAILED_CHANGE + message,
                last_error=error,
                **fields,
            )

    async def _snapshot(self, record: OwnedVolume, snap: str) -> None:
        vid = record.volume["id"]
        driver = self.drivers.get(record.service, record.volume["pool"])
        try:
            await run_blocking(driver.snapshot, vid, snap)
        except NotSupported as exc:  # never possible here: drop it, say why
            asked = [s for s in self._current(vid).get("snapshots", []) if s != snap]
            await self._change_failed(
                vid, "snapshot", f"snapshot {snap}: {exc.message}", snapshots=asked
            )
            raise Conflict(f"snapshot {snap} dropped") from None
        except SymphonyError as exc:
            await self._change_failed(vid, "snapshot", f"snapshot {snap}: {exc.message}")
            raise RetryLater(f"snapshot {snap}: {exc.message}") from None
        done = [s for s in self._current(vid).get("snapshots_done", []) if s != snap]
        await self._set(vid, snapshots_done=[*done, snap], status_message="", last_error=None)

    def _current(self, volume_id: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            record = volumes.get(self.cluster.store, volume_id)
            return dict(record) if record is not None else {}

    async def _create(self, record: OwnedVolume, leftovers: bool) -> None:
        """Make the volume (`leftovers`: first remove what an interrupted making left,
        or nothing: a root volume recorded `creating` with its instance), then record it
        ready."""
        vid = record.volume["id"]
        with self.board.track("volumes", vid) as progress:
            info = await self._make(record, progress, leftovers)
        await self._set(  # unless marked for deletion meanwhile (Conflict: decide again)
            vid,
            expect="creating",
            status="ready",
            status_message="",
            progress=None,
            format=info.format,
            allocated=info.allocated,
            actual_size=info.size,
        )
        log.info("volume %s ready (%d bytes)", vid, info.size, extra={"resource": vid})

    async def _make(self, record: OwnedVolume, progress: Progress, leftovers: bool) -> VolumeInfo:
        """Fetch the image if the volume has one, then make the volume from it."""
        volume = record.volume
        vid = volume["id"]
        driver = self.drivers.get(record.service, volume["pool"])
        copied = None
        try:
            image_path = image_format = None
            if volume.get("source"):  # a copy of another node's volume (a move)
                copied = os.path.join(transfer_dir(self.drivers.data_dir), f"{vid}.part")
                await fetch_volume(self.sources, volume["source"], copied, progress)
                image_path, image_format = copied, volume["source"]["format"]
                progress.set_stage("copying volume", volume["size"])
            elif volume["image_id"]:
                image_record = self.images.resolve(volume["image_id"])
                image_id = image_record["id"]
                progress.set_stage(
                    "fetching image",
                    image_record["size"],
                    lambda: self.images.fetched_bytes.get(image_id, 0),
                )
                image = await self.images.ensure_local(volume["image_id"])
                image_path = self.images.files.path(image["fingerprint"])
                image_format = image["format"]
                progress.set_stage("copying image", image_record["size"])
            info = await run_blocking(
                _make_volume,
                driver,
                leftovers,
                vid,
                volume["size"],
                image_path,
                image_format,
                volume["overlay"],
                progress,
                on_cancel=lambda: setattr(progress, "cancelled", True),
            )
        except SymphonyError as exc:
            raise GiveUp(exc.message) from None
        except OSError as exc:
            raise GiveUp(str(exc)) from None
        finally:
            if copied is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(copied)
        return info

    # -- orphans ----------------------------------------------------------------------------

    async def after_pass(self, wanted: Mapping[str, OwnedVolume], observed: Listings) -> None:
        # Listing every pool (`lvs`, `vgs`, a directory walk) on each wake-up is wasted work:
        # scan when one of this node's records went away, else once a minute (what a crash
        # may leave behind).
        ids = set(wanted)
        now = asyncio.get_running_loop().time()
        gone = self._scanned_ids is None or bool(self._scanned_ids - ids)
        if gone or now - self._scanned_at >= ORPHANS_EVERY:
            await self._remove_orphans(wanted)
            self._scanned_ids, self._scanned_at = ids, now

    def _pools(self, wanted: Mapping[str, OwnedVolume]) -> list[tuple[dict[str, Any], str]]:
        """Every (service, pool) of this node: each service's own pool, the pools its
        volumes are in, and for lvm its ready volume groups."""
        my_services = self._my_services
        pools = {(sid, s["pool"]) for sid, s in my_services.items()}
        pools |= {owned.pool_key for owned in wanted.values()}
        with self.cluster.store.lock:
            pools |= {
                (g["service_id"], g["name"])
                for g in lvm.all_records(self.cluster.store, lvm.VGS)
                if g["service_id"] in my_services and g["status"] == "ready"
            }
        return [(my_services[sid], pool) for sid, pool in sorted(pools)]

    async def _remove_orphans(self, wanted: Mapping[str, OwnedVolume]) -> None:
        """Volumes whose record is gone are removed, but only against a store known to be
        current (a restarted node may not have applied the latest entries yet)."""
        present: dict[PoolKey, set[str]] = {}
        for service, pool in self._pools(wanted):
            found = await run_blocking(self.drivers.get(service, pool).volumes)
            present[(service["id"], pool)] = set(found)
        if not any(ids - set(wanted) for ids in present.values()):
            return
        await self.cluster.barrier()
        with self.cluster.store.lock:
            current = {
                v["id"] for v in volumes.all_volumes(self.cluster.store) if v["node"] == self.node
            }
        for (service_id, pool), ids in present.items():
            driver = self.drivers.get(self._my_services[service_id], pool)
            for orphan in ids - current:
                with contextlib.suppress(NoSuchVolume):
                    await run_blocking(driver.delete, orphan)
                log.info("removed volume %s (no record)", orphan, extra={"resource": orphan})


def _make_volume(
    driver: BlockDriver,
    leftovers: bool,
    volume_id: str,
    size: int,
    image: str | None,
    image_format: str | None,
    overlay: bool,
    progress: Progress,
) -> VolumeInfo:
    """(blocking) Make a volume, first removing what an earlier try left (`leftovers`):
    one thread hop for both."""
    if leftovers:
        with contextlib.suppress(NoSuchVolume):
            driver.delete(volume_id)
    return driver.create(volume_id, size, image, image_format, overlay, progress.copied)
