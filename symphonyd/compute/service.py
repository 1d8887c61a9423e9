"""The compute service of a node: its request verbs (create, start, stop, restart and
remove instances, read their console), the drivers of its compute services and its
health and capacity reports.

Handlers validate and record what the user wants (a `pending` instance, `power` running
or stopped, a restart asked, `deleting`); the leader places new instances
(`compute/placement.py`) and the compute agent of the owning node (`compute/agent.py`)
makes the records true. Nothing here changes a domain.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from symphonyd import scheduler
from symphonyd.compute import cloudinit
from symphonyd.compute.driver import ComputeDriver, check_options
from symphonyd.compute.placement import check_resize, choose_node
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError
from symphonyd.image.service import ImageService
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import patch
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import instances, moves, nodes, services, volumes
from symphonyd.state.lookup import resolve_one
from symphonyd.validation import check_name, parse_size

__all__ = [
    "ComputeDrivers",
    "ComputeService",
    "check_options",
    "instance_dir",
    "make_driver",
]

log = logging.getLogger("symphonyd.compute")

HEALTH_EVERY = 10.0
MAX_CPUS = 256
MIN_MEMORY = 32 << 20
DEFAULT_MEMORY = 1 << 30
DEFAULT_DISK = 10 << 30
CONSOLE_CHUNK = 64 * 1024  # at most this much console text per read
MAX_STOP_TIMEOUT = 3600.0
DEFAULT_STOP_TIMEOUT = 60.0
BRIDGE_RE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def make_driver(name: str, data_dir: str, options: Mapping[str, Any]) -> ComputeDriver:
    """Open the driver `name` with its options (libvirt is imported only here: a host
    without libvirt0 runs everything else)."""
    if name != "libvirt":
        raise Invalid(f"unknown compute driver {name!r} (known: libvirt)")
    from symphonyd.compute.libvirt import LibvirtDriver

    return LibvirtDriver(
        uri=str(options.get("uri", "")),
        data_dir=data_dir,
        virt_type=str(options.get("virt_type", "auto")),
        machine=str(options.get("machine", "")) or None,
        test_cpus=int(options.get("test_cpus", 0)),
        test_memory=int(options.get("test_memory", 0)),
    )


def instance_dir(data_dir: str, instance_id: str) -> str:
    """Where a node keeps an instance's seed and console log."""
    return os.path.join(data_dir, "compute", "instances", instance_id)


class ComputeDrivers:
    """The driver of each compute service of this node, made on first use and shared by
    the health reports and the compute agent."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.drivers: dict[str, ComputeDriver] = {}

    def get(self, service: Mapping[str, Any]) -> ComputeDriver:
        driver = self.drivers.get(service["id"])
        if driver is None:
            driver = make_driver(service["driver"], self.data_dir, service.get("options", {}))
            self.drivers[service["id"]] = driver
        return driver

    def close(self) -> None:
        for driver in self.drivers.values():
            try:
                driver.close()
            except SymphonyError as exc:
                log.warning("compute: closing a driver: %s", exc)
        self.drivers.clear()


def check_network(network: object) -> str:
    """`user` or `bridge=NAME` (an existing host bridge; the name as Linux allows)."""
    if network is None or network == "user":
        return "user"
    if isinstance(network, str) and network.startswith("bridge="):
        bridge = network[len("bridge=") :]
        if 0 < len(bridge) <= 15 and set(bridge) <= BRIDGE_RE_CHARS and bridge not in (".", ".."):
            return network
        raise Invalid(f"invalid bridge name {bridge!r}: 1-15 letters, digits, '-', '_', '.'")
    raise Invalid(f"network must be 'user' or 'bridge=NAME', not {network!r}")


def check_cpus(cpus: object) -> int:
    if isinstance(cpus, str) and cpus.isascii() and cpus.isdigit():
        cpus = int(cpus)
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= MAX_CPUS:
        raise Invalid(f"cpus must be a whole number from 1 to {MAX_CPUS}, not {cpus!r}")
    return cpus


def check_memory(memory: object) -> int:
    size = parse_size(memory)
    if size < MIN_MEMORY:
        raise Invalid(f"memory must be at least 32M, not {memory!r}")
    return (size + (1 << 20) - 1) >> 20 << 20  # whole MiB


class ComputeService:
    def __init__(
        self,
        cluster: Cluster,
        images_service: ImageService,
        node: str,
        data_dir: str,
        drivers: ComputeDrivers,
        leader_view: scheduler.LeaderView | None = None,
    ) -> None:
        self.cluster = cluster
        self.leader_view = leader_view
        self.images = images_service
        self.node = node
        self.data_dir = data_dir
        self.drivers = drivers

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            return dict(resolve_one(instances.find(self.cluster.store, ref), ref, "instance"))

    def records(self) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [dict(r) for r in instances.all_instances(self.cluster.store)]

    # -- create -----------------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A new instance from a create request (already checked for unknown fields)."""
        name = check_name(body.get("name"), what="instance name (a hostname)")
        image = self.images.resolve(_text(body, "image", required=True) or "")
        if image["status"] != "ready":
            raise Conflict(f"image {image['name']} is {image['status']}, not ready")
        cpus = check_cpus(body.get("cpus", 1))
        memory = check_memory(body.get("memory", DEFAULT_MEMORY))
        disk = parse_size(body.get("disk", DEFAULT_DISK))
        needed = int(image.get("virtual_size") or image.get("size") or 0)
        if needed > disk:
            raise Invalid(
                f"image {image['name']} needs a {needed}-byte disk; --disk {disk} is smaller"
            )
        network = check_network(body.get("network"))
        keys = [cloudinit.check_ssh_key(k) for k in _texts(body, "ssh_keys")]
        user_data = body.get("user_data")
        if user_data is None:
            user_data = cloudinit.default_user_data(keys, name)
        elif not isinstance(user_data, str):
            raise Invalid("'user_data' must be text")
        else:
            user_data = cloudinit.check_user_data(user_data.encode())
        network_config = body.get("network_config")
        if network_config is not None:
            if not isinstance(network_config, str):
                raise Invalid("'network_config' must be text (YAML)")
            network_config = cloudinit.check_network_config(network_config.encode())
        start = body.get("start", True)
        if not isinstance(start, bool):
            raise Invalid("'start' must be true or false")
        node = _text(body, "node")
        data = [self._volume(ref) for ref in _texts(body, "volumes")]
        homes = sorted({v["node"] for v in data})
        if len(homes) > 1:
            raise Conflict(f"the volumes are on different nodes ({', '.join(homes)})")
        if homes and node is not None and node != homes[0]:
            raise Conflict(
                f"the volumes are on node {homes[0]}: the instance runs there, not on {node}"
            )
        if homes:
            node = homes[0]
        self.cluster.require_schema(EntryType.INSTANCE_CREATE)
        now = now_rfc3339()
        record: dict[str, Any] = {
            "id": new_id(),
            "name": name,
            "node": None,
            "service_id": None,
            "placement": {"node": node},
            "image_id": image["id"],
            "cpus": cpus,
            "memory": memory,
            "disk": disk,
            "root_volume_id": None,
            "volumes": [v["id"] for v in data],
            "network": network,
            "user_data": user_data,
            "network_config": network_config,
            "power": "running" if start else "stopped",
            "stop": None,
            "restarts": 0,
            "restarts_done": 0,
            "keep_volumes": False,
            "status": "pending",
            "status_message": "",
            "last_error": None,
            "domain": None,
            "applied": None,
            "at_next_start": [],
            "created_at": now,
            "updated_at": now,
        }
        with self.cluster.store.lock:
            store = self.cluster.store
            if any(r["name"] == name for r in instances.all_instances(store)):
                raise Conflict(f"an instance named {name!r} already exists")
            if any(v["name"] == f"{name}-root" for v in volumes.all_volumes(store)):
                raise Conflict(f"a volume named {name}-root exists: the root disk needs the name")
        reachable = await scheduler.placement_nodes(self.cluster, self.node, self.leader_view)
        with self.cluster.store.lock:  # refuse now what could not be placed
            choose_node(self.cluster.store, reachable, record)
        entry: dict[str, Any] = {"instance": record}
        version = self.cluster.spoken_body_version(EntryType.INSTANCE_CREATE)
        if version >= 2:  # placed as it applies (state/instance_fit.py)
            entry["placing"] = {"candidates": sorted(reachable), "root_volume_id": new_id()}
        result = await self.cluster.propose_ok(
            Entry(EntryType.INSTANCE_CREATE, entry, version=version)
        )
        return dict(result["instance"])

    # -- power ------------------------------------------------------------------------------

    async def _set(self, instance_id: str, expect: str | None = None, **fields: Any) -> None:
        await patch(self.cluster, EntryType.INSTANCE_UPDATE, instance_id, expect=expect, **fields)

    def _live(self, ref: str, verb: str) -> dict[str, Any]:
        record = self.resolve(ref)
        if record["status"] == "deleting":
            raise Conflict(f"instance {record['name']} is being removed")
        if record["status"] == "failed":
            raise Conflict(
                f"instance {record['name']} failed ({record['status_message']}): "
                f"remove it and create it again; it cannot {verb}"
            )
        if record.get("move"):
            target = record["move"]["node"]
            raise Conflict(f"instance {record['name']} is moving to node {target}: wait for it")
        return record

    async def start(self, ref: str) -> dict[str, Any]:
        record = self._live(ref, "start")
        fields: dict[str, Any] = {"power": "running", "stop": None, "last_error": None}
        if record["status"] in ("stopped", "stopping"):
            fields["status"] = "starting"
        await self._set(record["id"], **fields)
        return self.resolve(record["id"])

    async def stop(self, ref: str, force: bool, timeout: float | None) -> dict[str, Any]:
        record = self._live(ref, "stop")
        wait = DEFAULT_STOP_TIMEOUT if timeout is None else float(timeout)
        if not 0 <= wait <= MAX_STOP_TIMEOUT:
            raise Invalid(f"timeout must be from 0 to {MAX_STOP_TIMEOUT:g} seconds")
        fields: dict[str, Any] = {
            "power": "stopped",
            "stop": {"force": bool(force), "timeout": wait},
            "last_error": None,
        }
        if record["status"] in ("running", "starting"):
            fields["status"] = "stopping"
        await self._set(record["id"], **fields)
        return self.resolve(record["id"])

    async def restart(self, ref: str) -> dict[str, Any]:
        record = self._live(ref, "restart")
        if record["power"] != "running":
            raise Conflict(f"instance {record['name']} is stopped: start it instead")
        await self._set(record["id"], restarts=record.get("restarts", 0) + 1, last_error=None)
        return self.resolve(record["id"])

    async def resize(self, ref: str, cpus: object, memory: object) -> dict[str, Any]:
        """New vCPUs and/or memory: the node applies them live where its driver can (up to
        the domain's maximum), otherwise in the definition, taken at the next start."""
        record = self._live(ref, "be resized")
        fields: dict[str, Any] = {}
        if cpus is not None:
            fields["cpus"] = check_cpus(cpus)
        if memory is not None:
            fields["memory"] = check_memory(memory)
        if not fields:
            raise Invalid("give cpus, memory or both")
        if record["service_id"] is not None:
            with self.cluster.store.lock:
                check_resize(self.cluster.store, record, {**record, **fields})
        await self._set(record["id"], last_error=None, **fields)
        return self.resolve(record["id"])

    def _volume(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = volumes.find(self.cluster.store, ref)
        volume = dict(resolve_one(found, ref, "volume"))
        if volume["status"] != "ready":
            raise Conflict(f"volume {volume['name']} is {volume['status']}, not ready")
        return volume

    async def attach(self, volume_ref: str, instance_ref: str) -> dict[str, Any]:
        """Attach a ready data volume to an instance on its node: hot-plugged where the
        driver can, otherwise in the definition, taken at the next start."""
        record = self._live(instance_ref, "take a volume")
        volume = self._volume(volume_ref)
        body = {"id": record["id"], "volume_id": volume["id"], "now": now_rfc3339()}
        await self.cluster.propose_ok(Entry(EntryType.INSTANCE_ATTACH, body))
        return self.resolve(record["id"])

    async def detach(self, volume_ref: str, instance_ref: str | None) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = volumes.find(self.cluster.store, volume_ref)
            volume = dict(resolve_one(found, volume_ref, "volume"))
            users = [dict(r) for r in instances.using_volume(self.cluster.store, volume["id"])]
        users = [u for u in users if volume["id"] in u.get("volumes", [])]
        if instance_ref is not None:
            wanted = self.resolve(instance_ref)
            users = [u for u in users if u["id"] == wanted["id"]]
        if not users:
            raise Conflict(f"volume {volume['name']} is not attached")
        body = {"id": users[0]["id"], "volume_id": volume["id"], "now": now_rfc3339()}
        await self.cluster.propose_ok(Entry(EntryType.INSTANCE_DETACH, body))
        return self.resolve(users[0]["id"])

    async def delete(self, ref: str, keep_volumes: bool) -> dict[str, Any]:
        record = self.resolve(ref)
        if record["node"] is None or (record["status"] == "pending"):
            body = {"id": record["id"], "keep_volumes": keep_volumes, "now": now_rfc3339()}
            await self.cluster.propose_ok(Entry(EntryType.INSTANCE_DELETE, body))
            return {"deleted": record["id"], "name": record["name"]}
        await self._set(
            record["id"], status="deleting", keep_volumes=bool(keep_volumes), last_error=None
        )
        return self.resolve(record["id"])

    # -- moving and evacuating --------------------------------------------------------------

    async def move(self, ref: str, node: str | None) -> dict[str, Any]:
        """Move an instance to another node, cold (docs/compute.md): stopped, its volumes
        copied there verified, defined there and started if it ran; the source copies go
        only once it runs there."""
        record = self._live(ref, "move")
        return await self._begin_move(record, node)

    async def _begin_move(self, record: dict[str, Any], node: str | None) -> dict[str, Any]:
        if record["status"] not in moves.MOVABLE or record["node"] is None:
            raise Conflict(f"instance {record['name']} is {record['status']}: it cannot move")
        if record.get("move"):
            raise Conflict(f"instance {record['name']} is already moving")
        if node == record["node"]:
            raise Conflict(f"instance {record['name']} is on node {node} already")
        reachable = scheduler.reachable_nodes(self.cluster, self.node)
        with self.cluster.store.lock:
            store = self.cluster.store
            held = [volumes.get(store, v) for v in [record["root_volume_id"], *record["volumes"]]]
            if record["node"] not in reachable:
                raise Conflict(
                    f"instance {record['name']} cannot move: its volumes are only on node "
                    f"{record['node']}, which is unreachable"
                )
            for volume in held:
                if volume is None or volume["status"] != "ready":
                    raise Conflict(f"instance {record['name']} has a volume that is not ready")
                if volume.get("overlay"):
                    raise Conflict(
                        f"volume {volume['name']} is an overlay of an image: it cannot move"
                    )
            disk = sum(int(v["size"]) for v in held if v is not None)
            wish = {**record, "disk": disk, "placement": {"node": node}}
            target = choose_node(store, reachable, wish, exclude=frozenset({record["node"]}))
            block = services.on_node(store, target["node"], "block")
        if block is None:
            raise Conflict(f"node {target['node']} has no block service")
        move = {
            "node": target["node"],
            "service_id": target["id"],
            "block_service_id": block["id"],
            "pool": block["pool"],
            "was_running": record["power"] == "running",
            "timeout": DEFAULT_STOP_TIMEOUT,
        }
        body = {"id": record["id"], "step": "begin", "move": move, "now": now_rfc3339()}
        await self.cluster.propose_ok(Entry(EntryType.INSTANCE_MOVE, body))
        return self.resolve(record["id"])

    async def evacuate(self, node: str, stop_only: bool) -> dict[str, Any]:
        """Cordon `node` (nothing new is placed there) and move each of its instances to
        another node, or only stop them; says which could not and why."""
        with self.cluster.store.lock:
            if nodes.get(self.cluster.store, node) is None:
                raise NotFound(f"no node named {node!r}")
            mine = [
                dict(r)
                for r in instances.all_instances(self.cluster.store)
                if r["node"] == node and r["status"] not in ("failed", "deleting")
            ]
        await self._cordon(node, True)
        moving, stopped, cannot = [], [], []
        for record in sorted(mine, key=lambda r: r["name"]):
            try:
                if stop_only:
                    if record["power"] == "running":
                        await self.stop(record["id"], False, None)
                    stopped.append(record["name"])
                elif not record.get("move"):
                    await self._begin_move(record, None)
                    moving.append(record["name"])
                else:
                    moving.append(record["name"])
            except SymphonyError as exc:
                cannot.append({"name": record["name"], "reason": exc.message})
        return {
            "node": node,
            "cordoned": True,
            "moving": moving,
            "stopped": stopped,
            "cannot": cannot,
        }

    async def restore(self, node: str) -> dict[str, Any]:
        """Uncordon `node`: new work may be placed there again (nothing moves back)."""
        with self.cluster.store.lock:
            if nodes.get(self.cluster.store, node) is None:
                raise NotFound(f"no node named {node!r}")
        await self._cordon(node, False)
        return {"node": node, "cordoned": False}

    async def _cordon(self, node: str, cordoned: bool) -> None:
        body = {"name": node, "fields": {"cordoned": cordoned}}
        await self.cluster.propose_ok(Entry(EntryType.NODE_UPDATE, body), idempotent=True)

    # -- console ----------------------------------------------------------------------------

    def console_log(self, instance_id: str, offset: int) -> dict[str, Any]:
        """Console text of an instance of this node from byte `offset` (at most
        CONSOLE_CHUNK), with the offset to ask from next and the log's size."""
        path = os.path.join(instance_dir(self.data_dir, instance_id), "console.log")
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset > size:  # the log was started again (the guest rebooted anew)
                    offset = 0
                f.seek(offset)
                data = f.read(CONSOLE_CHUNK)
        except FileNotFoundError:
            return {"text": "", "offset": 0, "size": 0}
        return {
            "text": data.decode(errors="replace"),
            "offset": offset + len(data),
            "size": size,
        }

    # -- health -----------------------------------------------------------------------------

    async def report_health(self) -> None:
        """Check this node's compute service; write its health and capacity when they
        changed (an idle cluster's log does not grow)."""
        with self.cluster.store.lock:
            mine = [
                dict(s)
                for s in services.all_services(self.cluster.store)
                if s["node"] == self.node and s["type"] == "compute"
            ]
        for service in mine:
            driver = self.drivers.get(service)
            health = await asyncio.to_thread(driver.check)
            capacity = None
            if health.ok:
                host = await asyncio.to_thread(driver.host)
                capacity = {
                    "cpus": host.cpus,
                    "memory": host.memory,
                    "hypervisor": host.hypervisor,
                    "virt_type": host.virt_type,
                }
            old = service.get("health") or {}
            if (
                old.get("ok") == health.ok
                and old.get("message") == health.message
                and service.get("capacity") == capacity
            ):
                continue
            fields = {
                "health": {"ok": health.ok, "message": health.message, "checked_at": now_rfc3339()},
                "capacity": capacity,
            }
            await self.cluster.propose_ok(
                Entry(EntryType.SERVICE_UPDATE, {"id": service["id"], "fields": fields}),
                idempotent=True,
            )

    async def run_health(self) -> None:
        """Report health every HEALTH_EVERY seconds and when this node's services change."""
        while True:
            seen = self.cluster.store.revision
            ok = True
            try:
                await self.report_health()
            except (SymphonyError, OSError) as exc:
                ok = False
                log.warning("compute health: %s", exc)
            await self.cluster.wait_for_tables({"services"}, seen, HEALTH_EVERY if ok else 1.0)


def _text(body: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise Invalid(f"'{key}' must be {'given as ' if value is None else ''}text")
    return value


def _texts(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"'{key}' must be a list of texts")
    return list(value)
