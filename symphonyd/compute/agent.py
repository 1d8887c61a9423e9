"""The compute agent of a node: makes this node's instance records true with libvirt, and
brings what libvirt sees back to the records.

Built on `reconcile.Reconciler`. `compute/decide.py` (pure) compares one instance record
(and its root volume) with the domain its node has and lists the actions: claim it (when
the leader placed it), build it once its root volume is ready (seed ISO, domain
definition and first start, recorded in one step), define it again when the
host lost it (a host reboot, the test driver's state after a restart), start, stop
(graceful with a timeout, or forced), reboot, resize, attach or detach a data volume,
remove, or record what the domain does now.
A domain that stops without being asked (the guest powered off, crashed, or was destroyed
behind symphonyd's back) makes the instance `stopped` with the reason, never started
again by itself.

Live state comes from libvirt's lifecycle events (`driver.watch`): each event wakes the
agent, whose next pass lists the domains and records the change; a full comparison runs
at least every `rest` seconds as a backstop, and a lost hypervisor connection wakes it
too. Domains carrying symphonyd's metadata whose record is gone are removed (against a
store known to be current); domains without it are reported, never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.compute.decide import decide_instance, detach_note, disk_targets
from symphonyd.compute.domains import DomainMaker, OwnedInstance, applied_by
from symphonyd.compute.driver import (
    DomainEvent,
    DomainInfo,
    NoSuchDomain,
)
from symphonyd.compute.service import ComputeDrivers, instance_dir
from symphonyd.errors import Conflict, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import (
    Action,
    GiveUp,
    Reconciler,
    RetryLater,
    claim,
    patch,
    run_blocking,
)
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import instances, services, volumes

__all__ = ["ComputeAgent", "OwnedInstance"]

log = logging.getLogger("symphonyd.compute")

ORPHANS_EVERY = 60.0
STOP_POLL = 0.25  # how often a graceful stop looks whether the guest is off
RELIST = 2.0  # after the hypervisor did not answer, ask again this soon


@dataclass(frozen=True)
class Observed:
    domains: dict[str, DomainInfo] | None  # by instance id; None: the driver did not answer
    unmanaged: tuple[str, ...] = ()
    seeded: frozenset[str] = frozenset()  # `creating` instances whose seed is written


class ComputeAgent(Reconciler[OwnedInstance]):
    name = "compute"
    tables = frozenset({"instances", "volumes", "services"})
    concurrency = 4

    def __init__(self, cluster: Cluster, node: str, data_dir: str, drivers: ComputeDrivers):
        super().__init__(cluster)
        self.node = node
        self.data_dir = data_dir
        self.drivers = drivers
        self.domains = DomainMaker(cluster, node, data_dir, drivers)
        self._watched: set[str] = set()  # compute services whose events reach us
        self._reported: set[str] = set()  # unmanaged domains already logged
        self._service: dict[str, Any] | None = None
        self._scanned_ids: set[str] | None = None
        self._scanned_at = 0.0

    # -- decide ---------------------------------------------------------------------------

    def wanted(self) -> dict[str, OwnedInstance]:
        store = self.cluster.store
        with store.lock:
            service = services.on_node(store, self.node, "compute")
            self._service = dict(service) if service is not None else None
            if service is None:
                return {}
            wanted = {}
            for record in instances.all_instances(store):
                if record["node"] != self.node or record["service_id"] != service["id"]:
                    continue
                root = volumes.get(store, record["root_volume_id"] or "")
                data = tuple(
                    dict(v)
                    for v in (volumes.get(store, vid) for vid in record.get("volumes", []))
                    if v is not None
                )
                move_copies = ((record.get("move") or {}).get("volumes") or {}).values()
                copies = tuple(
                    dict(v)
                    for v in (volumes.get(store, vid) for vid in move_copies)
                    if v is not None
                )
                wanted[record["id"]] = OwnedInstance(
                    dict(record), dict(service), dict(root) if root else None, data, copies
                )
            return wanted

    async def observe(self, wanted: Mapping[str, OwnedInstance]) -> Observed:
        service = self._service
        if service is None:
            return Observed(None)
        driver = self.drivers.get(service)
        if service["id"] not in self._watched:
            try:
                driver.watch(self._on_event)
                self._watched.add(service["id"])
            except SymphonyError as exc:
                log.warning("compute: no libvirt events (comparing every %gs): %s", self.rest, exc)
        try:
            found = await run_blocking(driver.domains)
        except SymphonyError as exc:
            log.warning("compute: cannot list domains (trying again in %gs): %s", RELIST, exc)
            asyncio.get_running_loop().call_later(RELIST, self.wake)  # not the 30 s rest
            return Observed(None)
        mine = {d.instance_id: d for d in found if d.instance_id is not None}
        seeded = frozenset(
            iid
            for iid, record in wanted.items()
            if record.instance["status"] == "creating"
            and os.path.exists(self.domains.seed_path(iid))
        )
        unmanaged = tuple(sorted(d.name for d in found if d.instance_id is None))
        return Observed(mine, unmanaged, seeded)

    def _on_event(self, event: DomainEvent | None) -> None:
        if event is None:
            log.warning("compute: the hypervisor connection was lost; comparing everything")
        else:
            log.debug("compute: %s %s %s", event.name, event.event, event.detail)
        self.wake()

    def decide(self, record: OwnedInstance, observed: Observed) -> list[Action]:
        domains = observed.domains
        domain = domains.get(record.instance["id"]) if domains is not None else None
        hotplug = self.drivers.get(record.service).capabilities.hotplug_disks
        iid = record.instance["id"]
        return decide_instance(
            record.instance,
            record.root,
            domain,
            domains is not None,
            hotplug,
            record.copies,
            seeded=iid in observed.seeded,
        )

    # -- act ------------------------------------------------------------------------------

    async def act(self, record: OwnedInstance, action: Action) -> None:
        instance = record.instance
        iid = instance["id"]
        driver = self.drivers.get(record.service)
        verb = action.verb
        if verb == "claim":
            await claim(self.cluster, "instances", iid, self.node)
        elif verb == "fail":
            raise GiveUp(str(action.arg))
        elif verb == "seed":
            try:
                await run_blocking(self.domains.write_seed, instance)
            except (SymphonyError, OSError) as exc:
                raise GiveUp(f"cloud-init seed: {exc}") from None
        elif verb == "build":
            await self._build(record)
        elif verb == "define":
            await self._define(record)
            status = "starting" if instance["power"] == "running" else "stopped"
            await self._set(
                iid,
                expect=instance["status"],
                status=status,
                applied=applied_by(record),
                at_next_start=[],
            )
            log.info(
                "instance %s defined again (the host had lost it)", iid, extra={"resource": iid}
            )
        elif verb == "start":
            try:
                await run_blocking(driver.start, iid)
            except SymphonyError as exc:
                await self._failed_change(
                    record, "start", exc.message, power="stopped", status="stopped"
                )
                return
            # a fresh start runs the definition: what waited for it is live now
            held = {
                vid: target
                for vid, target in ((instance.get("applied") or {}).get("volumes") or {}).items()
                if vid in instance.get("volumes", [])
            }
            applied = {**(instance.get("applied") or {}), "volumes": held}
            await self._set(
                iid,
                expect="starting",
                status="running",
                status_message="",
                at_next_start=[],
                applied=applied,
            )
            log.info("instance %s started", iid, extra={"resource": iid})
        elif verb == "stop":
            await self._stop(record)
        elif verb == "reboot":
            try:
                await run_blocking(driver.reboot, iid)
            except SymphonyError as exc:
                await self._failed_change(record, "restart", exc.message)
            await self._set(iid, restarts_done=instance.get("restarts", 0))
        elif verb == "record":
            await self._set(iid, expect=instance["status"], **action.arg)
        elif verb == "adopt":
            applied = {"cpus": instance["cpus"], "memory": instance["memory"], "volumes": {}}
            await self._set(iid, expect=instance["status"], applied=applied)
        elif verb == "resize":
            await self._resize(record)
        elif verb in ("attach", "detach", "defer detach"):
            await self._change_disk(record, verb, str(action.arg))
        elif verb == "remove":
            await self._remove(record)
        elif verb in ("copy out", "abort move", "switch", "finish move"):
            await self._move_step(record, verb, action.arg)
        else:
            raise GiveUp(f"unknown action {action}")

    async def give_up(self, record: OwnedInstance, reason: str) -> None:
        iid = record.instance["id"]
        with contextlib.suppress(Conflict, NotFound):
            await self._set(iid, expect="creating", status="failed", status_message=reason)
        log.warning("instance %s failed: %s", iid, reason, extra={"resource": iid})

    async def _set(self, instance_id: str, expect: str | None = None, **fields: Any) -> None:
        await patch(self.cluster, EntryType.INSTANCE_UPDATE, instance_id, expect=expect, **fields)

    async def _failed_change(
        self, record: OwnedInstance, action: str, message: str, **fields: Any
    ) -> None:
        iid = record.instance["id"]
        error = {"action": action, "message": message, "at": now_rfc3339()}
        with contextlib.suppress(Conflict):
            await self._set(iid, expect=record.instance["status"], last_error=error, **fields)
        log.warning("instance %s: %s failed: %s", iid, action, message, extra={"resource": iid})

    # -- building ---------------------------------------------------------------------------

    async def _define(self, record: OwnedInstance) -> DomainInfo:
        driver = self.drivers.get(record.service)
        spec = await run_blocking(self.domains.spec, record)
        await run_blocking(self.domains.write_seed, record.instance)
        return await run_blocking(driver.define, spec)

    async def _build(self, record: OwnedInstance) -> None:
        """Seed, domain and first start of an instance whose root volume is ready, then one
        record of the outcome (`running`, or `stopped` when asked so or when the start
        failed, with the reason). A failure before the domain is defined undoes what was
        made and fails the instance with the reason."""
        instance = record.instance
        iid = instance["id"]
        boot = instance["power"] == "running"
        try:
            info, refused = await run_blocking(self.domains.make, record, boot)
        except GiveUp:
            raise
        except SymphonyError as exc:
            raise GiveUp(exc.message) from None
        except OSError as exc:
            raise GiveUp(str(exc)) from None
        fields: dict[str, Any] = {
            "status": "running" if boot else "stopped",
            "status_message": "",
            "domain": {"vcpus": info.vcpus, "memory": info.memory},
            "applied": applied_by(record),
            "at_next_start": [],
        }
        if refused is not None:
            error = {"action": "start", "message": refused, "at": now_rfc3339()}
            fields.update(status="stopped", power="stopped", last_error=error)
            log.warning("instance %s: start failed: %s", iid, refused, extra={"resource": iid})
        await self._set(iid, expect=instance["status"], **fields)  # Conflict: decided again
        log.info(
            "instance %s %s on %s",
            iid,
            "started" if fields["status"] == "running" else "defined",
            self.node,
            extra={"resource": iid},
        )

    # -- changes of the definition ----------------------------------------------------------

    async def _resize(self, record: OwnedInstance) -> None:
        """Apply new vCPUs and memory: live where the driver can (up to the domain's
        maximum), otherwise in the definition, taken at the next start (and said so)."""
        instance = record.instance
        iid = instance["id"]
        driver = self.drivers.get(record.service)
        applied = dict(instance.get("applied") or {})
        running = await self._state(driver, iid) in ("running", "paused")
        later = []
        for key, change in (("cpus", driver.set_vcpus), ("memory", driver.set_memory)):
            if applied.get(key) == instance[key]:
                continue
            live = running and driver.capabilities.live_resize
            if live:
                try:
                    await run_blocking(change, iid, instance[key], True)
                except SymphonyError as exc:
                    log.info("instance %s: %s not changed live (%s)", iid, key, exc.message)
                    live = False
            if not live:
                try:
                    await run_blocking(change, iid, instance[key], False)
                except SymphonyError as exc:
                    await self._failed_change(record, "resize", exc.message)
                    raise RetryLater(f"resize: {exc.message}") from None
                if running:
                    later.append(f"{key} {_amount(key, instance[key])} at the next start")
            applied[key] = instance[key]
        notes = [
            n for n in instance.get("at_next_start") or [] if not n.startswith(("cpus ", "memory "))
        ]
        await self._set(
            iid, expect=instance["status"], applied=applied, at_next_start=notes + later
        )
        log.info(
            "instance %s resized%s",
            iid,
            " (at its next start)" if later else "",
            extra={"resource": iid},
        )

    async def _change_disk(self, record: OwnedInstance, verb: str, volume_id: str) -> None:
        instance = record.instance
        iid = instance["id"]
        driver = self.drivers.get(record.service)
        applied = dict(instance.get("applied") or {})
        held = dict(applied.get("volumes") or {})
        notes = list(instance.get("at_next_start") or [])
        if verb == "defer detach":
            await self._set(
                iid, expect=instance["status"], at_next_start=[*notes, detach_note(volume_id)]
            )
            return
        running = await self._state(driver, iid) in ("running", "paused", "stopping")
        live = running and driver.capabilities.hotplug_disks
        if verb == "attach":
            volume = next((v for v in record.data if v["id"] == volume_id), None)
            if volume is None:
                raise RetryLater(f"volume {volume_id} is not known here yet", delay=1.0)
            target = next(t for t in disk_targets(len(held) + 1) if t not in held.values())
            disk = await run_blocking(self.domains.disk, volume, target)
            try:
                await run_blocking(driver.attach_disk, iid, disk, live)
            except SymphonyError as exc:
                await self._failed_change(record, "attach", exc.message)
                raise RetryLater(f"attach: {exc.message}") from None
            held[volume_id] = target
            if running and not live:
                notes.append(f"volume {volume['name']} is attached at the next start")
        else:
            try:
                await run_blocking(driver.detach_disk, iid, held[volume_id], live)
            except NoSuchDomain:
                raise  # defined again at the next pass, without it
            except NotFound:
                pass  # the domain does not hold it: detached already
            except SymphonyError as exc:
                await self._failed_change(record, "detach", exc.message)
                raise RetryLater(f"detach: {exc.message}") from None
            del held[volume_id]
            notes = [n for n in notes if n != detach_note(volume_id)]
        await self._set(
            iid,
            expect=instance["status"],
            applied={**applied, "volumes": held},
            at_next_start=notes,
            last_error=None,
        )
        log.info(
            "instance %s: volume %s %sed%s",
            iid,
            volume_id,
            verb,
            "" if live or not running else " (at the next start)",
            extra={"resource": iid},
        )

    # -- moving -------------------------------------------------------------------------

    async def _move_step(self, record: OwnedInstance, verb: str, reason: Any) -> None:
        instance = record.instance
        iid = instance["id"]
        body: dict[str, Any] = {"id": iid, "now": now_rfc3339()}
        if verb == "copy out":
            body.update(step="copy", volumes=self._copies(record))
        elif verb == "abort move":
            body.update(step="abort", reason=str(reason))
        elif verb == "switch":
            body.update(step="switch")
        else:
            body.update(step="finish")
        await self.cluster.propose_ok(Entry(EntryType.INSTANCE_MOVE, body))
        log.info(
            "instance %s: move %s%s",
            iid,
            body["step"],
            f" ({reason})" if reason else "",
            extra={"resource": iid},
        )

    def _copies(self, record: OwnedInstance) -> list[dict[str, Any]]:
        """Records of the copies of the instance's volumes on the move's target node."""
        move = record.instance["move"]
        now = now_rfc3339()
        sources = [record.root, *record.data] if record.root else list(record.data)
        copies = []
        for volume in sources:
            if volume is None:
                continue
            copy_id = new_id()
            copies.append(
                {
                    **{k: None for k in ("format", "allocated", "actual_size", "progress")},
                    "id": copy_id,
                    "name": f"{volume['name'][:48]}-mv-{copy_id[:6]}",
                    "node": move["node"],
                    "placement": {"node": move["node"], "pool": move["pool"]},
                    "service_id": move["block_service_id"],
                    "pool": move["pool"],
                    "size": volume["size"],
                    "image_id": None,
                    "overlay": False,
                    "source": {
                        "volume_id": volume["id"],
                        "node": self.node,
                        "format": volume["format"] or "raw",
                    },
                    "status": "pending",
                    "status_message": "",
                    "last_error": None,
                    "snapshots": [],
                    "snapshots_done": [],
                    "created_at": now,
                    "updated_at": now,
                }
            )
        return copies

    # -- stopping and removing ------------------------------------------------------------

    async def _stop(self, record: OwnedInstance) -> None:
        instance = record.instance
        iid = instance["id"]
        driver = self.drivers.get(record.service)
        how = instance.get("stop") or {}
        if instance["status"] != "stopping":
            with contextlib.suppress(Conflict):
                await self._set(iid, expect=instance["status"], status="stopping")
        forced = bool(how.get("force"))
        if not forced:  # ask the guest (ACPI), then wait for it up to the timeout
            await run_blocking(driver.shutdown, iid)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + float(how.get("timeout", 60.0))
            while await self._state(driver, iid) not in ("stopped", "crashed", None):
                if loop.time() >= deadline:
                    forced = True
                    log.info(
                        "instance %s did not stop within its timeout: forced off",
                        iid,
                        extra={"resource": iid},
                    )
                    break
                await asyncio.sleep(STOP_POLL)
        if forced:
            await run_blocking(driver.destroy, iid)
        await self._set(iid, expect="stopping", status="stopped", status_message="", stop=None)
        log.info("instance %s stopped", iid, extra={"resource": iid})

    async def _state(self, driver: Any, instance_id: str) -> str | None:
        for domain in await run_blocking(driver.domains):
            if domain.instance_id == instance_id:
                return str(domain.state)
        return None

    async def _remove(self, record: OwnedInstance) -> None:
        instance = record.instance
        iid = instance["id"]
        driver = self.drivers.get(record.service)
        with contextlib.suppress(NoSuchDomain):
            await run_blocking(driver.undefine, iid)
        await run_blocking(shutil.rmtree, instance_dir(self.data_dir, iid), True)
        body = {
            "id": iid,
            "keep_volumes": bool(instance.get("keep_volumes")),
            "now": now_rfc3339(),
        }
        await self.cluster.propose_ok(Entry(EntryType.INSTANCE_DELETE, body), idempotent=True)
        log.info("instance %s removed", iid, extra={"resource": iid})

    # -- what the host has without a record -------------------------------------------------

    async def after_pass(self, wanted: Mapping[str, OwnedInstance], observed: Observed) -> None:
        for name in observed.unmanaged:
            if name not in self._reported:
                self._reported.add(name)
                log.warning("compute: domain %s was not defined by symphonyd; left alone", name)
        if observed.domains is None or self._service is None:
            return
        ids = set(wanted)
        now = asyncio.get_running_loop().time()
        strays = set(observed.domains) - ids
        gone = self._scanned_ids is None or bool(self._scanned_ids - ids)
        if not strays or not (gone or now - self._scanned_at >= ORPHANS_EVERY):
            return
        self._scanned_ids, self._scanned_at = ids, now
        await self.cluster.barrier()
        with self.cluster.store.lock:  # an instance moved away belongs to its new node
            current = {
                r["id"]
                for r in instances.all_instances(self.cluster.store)
                if r["node"] == self.node
            }
        driver = self.drivers.get(self._service)
        for orphan in sorted(strays - current - set(self.workers)):
            try:
                await run_blocking(driver.undefine, orphan)
                what = "removed domain of instance %s (its record is gone or on another node)"
            except NoSuchDomain:
                what = "domain of instance %s was already gone; removed its files"
            await run_blocking(shutil.rmtree, instance_dir(self.data_dir, orphan), True)
            log.info(what, orphan, extra={"resource": orphan})

    async def close(self) -> None:
        await super().close()
        self.drivers.close()


def _amount(key: str, value: int) -> str:
    return f"{value >> 20} MiB" if key == "memory" else str(value)
