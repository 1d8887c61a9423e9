"""Where an instance runs: the checks a request meets before anything is written, and the
leader's loop that places the instances that had to wait.

What fits where is `state/instance_fit.py` (pure). Most instances are placed by their own
`INSTANCE_CREATE` entry as it applies; the API handler first checks here (`choose_node`)
that a place exists now, so a request that cannot be served is refused with the resource
that is short. An instance recorded unplaced (nothing fitted at that point of the log, or
a member still speaks a schema before 7) waits for the leader's loop: one `INSTANCE_PLACE`
entry gives it its node and its root volume record, already placed on that node's block
service, in one step (`state/references.py`), so an instance and its disk never end up on
two nodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from symphonyd import scheduler
from symphonyd.errors import Conflict, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import instances, nodes, services
from symphonyd.state.fit import best
from symphonyd.state.instance_fit import (
    INSTANCE_FIT,
    InstanceRequest,
    fits,
    request_for,
    root_volume,
)
from symphonyd.state.store import Store

__all__ = ["check_resize", "choose_node", "place_instances"]

log = logging.getLogger("symphonyd.compute")

PLACE_PATIENCE = scheduler.PLACE_PATIENCE


def choose_node(
    store: Store,
    reachable: set[str],
    record: Mapping[str, Any],
    exclude: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The compute service for an instance record (call with the store locked), or
    Conflict saying why none (for an explicit node: which resource it lacks). Nodes in
    `exclude` are not candidates (a move: the node it leaves)."""
    request = request_for(store, record)
    wish = request.node
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
        short = fits(service, request, INSTANCE_FIT.committed(store))
        if short is not None:
            raise Conflict(f"node {wish} cannot take instance {record['name']}: {short}")
        return dict(service)
    try:
        return best(store, reachable - exclude, INSTANCE_FIT, request)
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
            reasons.append(fits(service, request, committed) or f"{service['node']}: fits")
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
    short = fits(service, request, committed)
    if short is not None:
        raise Conflict(f"instance {record['name']} cannot be resized: {short}")


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
            "root_volume": root_volume(record, block, new_id(), now_rfc3339(), "pending"),
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
