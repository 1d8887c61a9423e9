"""Where an instance runs: the instances' fit for the leader's scheduler, and the leader's
loop that places pending instances.

A node can take an instance when it has a healthy compute service and a healthy block
service, enough vCPUs and memory free (its capacity times the cluster's overcommit ratios
`compute.cpu_overcommit` and `compute.memory_overcommit`, minus what the instances placed
there take) and room in its block pool for the root disk. Among those, a node holding the
instance's image wins (no fetch), then the least loaded. An explicit node is honoured or
refused with the resource that is short.

Placing is one `INSTANCE_PLACE` entry: the instance gets its node and its root volume
record, already placed on that node's block service, in one step (`state/references.py`),
so an instance and its disk never end up on two nodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd import scheduler
from symphonyd.errors import Conflict, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import cluster as cluster_table
from symphonyd.state import images, instances, nodes, services
from symphonyd.state.store import Store

__all__ = [
    "INSTANCE_FIT",
    "InstanceRequest",
    "check_resize",
    "choose_node",
    "place_instances",
    "root_volume",
]

log = logging.getLogger("symphonyd.compute")

PLACE_PATIENCE = scheduler.PLACE_PATIENCE
GiB = 1 << 30


@dataclass(frozen=True)
class InstanceRequest:
    cpus: int
    memory: int
    disk: int
    holders: frozenset[str]  # nodes holding the image
    node: str | None


def _committed(store: Store) -> dict[str, Any]:
    """What the instances placed on each compute service take, the block services by
    node (with what their pending volumes take), and the overcommit ratios."""
    used: dict[str, list[int]] = {}
    for record in instances.all_instances(store):
        if record["service_id"] and record["status"] != "failed":
            taken = used.setdefault(record["service_id"], [0, 0, 0])
            taken[0] += record["cpus"]
            taken[1] += record["memory"]
            taken[2] += 1
    block = {
        s["node"]: dict(s)
        for s in services.all_services(store)
        if s["type"] == "block" and (s.get("health") or {}).get("ok")
    }
    config = cluster_table.config(store)
    return {
        "used": used,
        "block": block,
        "block_committed": scheduler.VOLUME_FIT.committed(store),
        "cpu_ratio": float(config["compute.cpu_overcommit"]),
        "memory_ratio": float(config["compute.memory_overcommit"]),
    }


def _room(service: Mapping[str, Any], committed: Mapping[str, Any]) -> tuple[float, float, int]:
    """(vCPUs free, memory bytes free, instances placed) on a compute service."""
    capacity = service.get("capacity") or {}
    cpus, used_memory, count = committed["used"].get(service["id"], [0, 0, 0])
    return (
        int(capacity.get("cpus", 0)) * committed["cpu_ratio"] - cpus,
        int(capacity.get("memory", 0)) * committed["memory_ratio"] - used_memory,
        count,
    )


def _filter(
    service: Mapping[str, Any], request: InstanceRequest, committed: Mapping[str, Any]
) -> str | None:
    node = service["node"]
    if request.node is not None and node != request.node:
        return "another node"
    cpus, memory, _count = _room(service, committed)
    if cpus < request.cpus:
        ratio = committed["cpu_ratio"]
        return (
            f"node {node} has {max(cpus, 0):g} vCPUs free, {request.cpus} asked "
            f"(compute.cpu_overcommit {ratio:g})"
        )
    if memory < request.memory:
        ratio = committed["memory_ratio"]
        return (
            f"node {node} has {max(memory, 0) / GiB:.2f} GiB of memory free, "
            f"{request.memory / GiB:.2f} GiB asked (compute.memory_overcommit {ratio:g})"
        )
    if request.disk == 0:  # a resize: the root disk is made already
        return None
    block = committed["block"].get(node)
    if block is None:
        return f"node {node} has no healthy block service for the root disk"
    free = int((block.get("capacity") or {}).get("free", 0))
    free -= int(committed["block_committed"].get(block["id"], 0))
    if free < request.disk:
        return (
            f"node {node} has {max(free, 0) / GiB:.2f} GiB free in its block pool, "
            f"{request.disk / GiB:.2f} GiB asked for the root disk"
        )
    return None


def _score(
    service: Mapping[str, Any], request: InstanceRequest, committed: Mapping[str, Any]
) -> tuple[Any, ...]:
    """The image's holders first, then the fewest vCPUs placed per host CPU."""
    capacity = service.get("capacity") or {}
    cpus, _memory, _count = _room(service, committed)
    total = max(int(capacity.get("cpus", 0)) * committed["cpu_ratio"], 1.0)
    return (service["node"] not in request.holders, 1.0 - cpus / total)


def _nothing(request: InstanceRequest) -> str:
    return (
        f"no healthy, reachable node has a compute and a block service with {request.cpus} "
        f"vCPUs, {request.memory / GiB:.2f} GiB of memory and {request.disk / GiB:.2f} GiB "
        "of disk free (see `symphonyd service list` and `symphonyd instance list`)"
    )


INSTANCE_FIT: scheduler.Fit[InstanceRequest] = scheduler.Fit(
    kind="instance",
    service_type="compute",
    committed=_committed,
    filter=_filter,
    score=_score,
    nothing=_nothing,
)


def choose_node(
    store: Store,
    reachable: set[str],
    record: Mapping[str, Any],
    exclude: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The compute service for an instance record (call with the store locked), or
    Conflict saying why none (for an explicit node: which resource it lacks). Nodes in
    `exclude` are not candidates (a move: the node it leaves)."""
    wish = (record.get("placement") or {}).get("node")
    image = images.get(store, record["image_id"]) if record.get("image_id") else None
    request = InstanceRequest(
        cpus=record["cpus"],
        memory=record["memory"],
        disk=record["disk"],
        holders=frozenset(image["holders"]) if image else frozenset(),
        node=wish,
    )
    if wish is not None:
        if nodes.get(store, wish) is None:
            raise NotFound(f"no node named {wish!r}")
        service = services.on_node(store, wish, "compute")
        if service is None:
            raise Conflict(f"node {wish} has no compute service (`symphonyd service new compute`)")
        if wish not in reachable:
            raise Conflict(f"node {wish} is unreachable")
        if (nodes.get(store, wish) or {}).get("cordoned"):
            raise Conflict(f"node {wish} is cordoned (`symphonyd node restore {wish}`)")
        if not (service.get("health") or {}).get("ok"):
            why = (service.get("health") or {}).get("message") or "not checked yet"
            raise Conflict(f"the compute service of node {wish} is unhealthy: {why}")
        short = _filter(service, request, INSTANCE_FIT.committed(store))
        if short is not None:
            raise Conflict(f"node {wish} cannot take instance {record['name']}: {short}")
        return dict(service)
    try:
        return scheduler.best(store, reachable - exclude, INSTANCE_FIT, request)
    except Conflict as exc:
        why = _why_not(store, reachable, request, exclude)
        raise Conflict(f"{exc.message}: {why}") from None


def _why_not(
    store: Store, reachable: set[str], request: InstanceRequest, exclude: frozenset[str]
) -> str:
    """Why each compute service cannot take `request`, for the refusal."""
    committed = INSTANCE_FIT.committed(store)
    reasons = []
    for service in sorted(services.of_type(store, "compute"), key=lambda s: s["node"]):
        if service["node"] in exclude:
            continue
        health = service.get("health") or {}
        if service["node"] not in reachable:
            reasons.append(f"node {service['node']} is unreachable")
        elif (nodes.get(store, service["node"]) or {}).get("cordoned"):
            reasons.append(f"node {service['node']} is cordoned")
        elif not health.get("ok"):
            why = health.get("message") or "not checked yet"
            reasons.append(f"the compute service of node {service['node']} is unhealthy: {why}")
        else:
            reasons.append(_filter(service, request, committed) or f"{service['node']}: fits")
    return "; ".join(reasons) or "no other node has a compute service"


def check_resize(store: Store, record: Mapping[str, Any], resized: Mapping[str, Any]) -> None:
    """Refuse a resize the instance's node has no room for (its present share counted
    as free). Call with the store locked."""
    service = services.get(store, record["service_id"])
    if service is None:
        raise Conflict(f"instance {record['name']} has no compute service any more")
    committed = dict(INSTANCE_FIT.committed(store))
    used = dict(committed["used"])
    cpus, memory, count = used.get(service["id"], [0, 0, 0])
    used[service["id"]] = [cpus - record["cpus"], memory - record["memory"], count]
    committed["used"] = used
    request = InstanceRequest(resized["cpus"], resized["memory"], 0, frozenset(), service["node"])
    short = _filter(service, request, committed)
    if short is not None:
        raise Conflict(f"instance {record['name']} cannot be resized: {short}")


def root_volume(record: Mapping[str, Any], node: str, block: Mapping[str, Any]) -> dict[str, Any]:
    """The root volume record of an instance placed on `node`: made from its image, in the
    node's block pool, named after the instance."""
    now = now_rfc3339()
    return {
        "id": new_id(),
        "name": f"{record['name']}-root",
        "node": node,
        "placement": {"node": node, "pool": block["pool"]},
        "service_id": block["id"],
        "pool": block["pool"],
        "size": record["disk"],
        "image_id": record["image_id"],
        "overlay": False,
        "status": "pending",
        "status_message": "",
        "last_error": None,
        "format": None,
        "allocated": None,
        "actual_size": None,
        "snapshots": [],
        "snapshots_done": [],
        "progress": None,
        "created_at": now,
        "updated_at": now,
    }


async def _place(cluster: Cluster, self_name: str, first_tried: dict[str, float]) -> bool:
    """Place every unplaced pending instance; True while one waits for another try."""
    now = time.monotonic()
    waiting = False
    reachable = scheduler.reachable_nodes(cluster, self_name)
    store = cluster.store
    with store.lock:
        unplaced = [
            dict(r)
            for r in instances.all_instances(store)
            if r["node"] is None and r["status"] == "pending"
        ]
    for record in unplaced:
        try:
            with store.lock:
                service = choose_node(store, reachable, record)
                block = services.on_node(store, service["node"], "block")
            if block is None:
                raise Conflict(f"node {service['node']} has no block service")
        except SymphonyError as exc:
            if now - first_tried.setdefault(record["id"], now) < PLACE_PATIENCE:
                waiting = True
                continue
            first_tried.pop(record["id"], None)
            await _fail(cluster, record["id"], exc.message)
            continue
        first_tried.pop(record["id"], None)
        body = {
            "id": record["id"],
            "node": service["node"],
            "service_id": service["id"],
            "root_volume": root_volume(record, service["node"], block),
        }
        try:
            await cluster.propose_ok(Entry(EntryType.INSTANCE_PLACE, body))
        except Conflict as exc:
            log.info("instance %s not placed: %s", record["id"], exc.message)
            continue
        log.info(
            "instance %s placed on %s",
            record["id"],
            service["node"],
            extra={"resource": record["id"]},
        )
    return waiting


async def place_instances(cluster: Cluster, self_name: str) -> None:
    """The leader's loop: place what waits after every change placement depends on (and
    every second while an instance waits for a place)."""
    first_tried: dict[str, float] = {}
    while True:
        seen = cluster.store.revision
        try:
            waiting = await _place(cluster, self_name, first_tried)
        except (SymphonyError, OSError) as exc:
            log.warning("instance placement: %s", exc)
            waiting = True
        await cluster.wait_for_tables(
            {"instances", "services", "nodes", "images", "volumes"}, seen, 1.0 if waiting else 30.0
        )


async def _fail(cluster: Cluster, instance_id: str, message: str) -> None:
    fields = {"status": "failed", "status_message": message, "updated_at": now_rfc3339()}
    body = {"id": instance_id, "fields": fields, "expect_status": "pending"}
    with contextlib.suppress(Conflict):
        await cluster.propose_ok(Entry(EntryType.INSTANCE_UPDATE, body))
