"""Placement: which node's service gets a new resource, one fit function per kind.

Placement is generic (`state/fit.py`: `Fit`, `best`): the healthy services of a type on
nodes the leader reaches (`placement_nodes`) and that are not cordoned (`node evacuate`),
filtered and scored by the kind's `Fit` (volumes: `VOLUME_FIT` here; instances:
`state/instance_fit.py`).

The API handler checks that a placement exists (so a request that cannot be served is
refused before anything is written) and records the volume unplaced; the leader alone
places it (`place_volumes`, a leader-only loop, see `leader.py`), so two volumes created
at once on two nodes never both count on the same free space. A candidate is a healthy block
service on a node the leader reaches, with the asked pool and node if any, whose
free space minus what its pending volumes will take holds the volume; among them, one on
a node that already holds the image wins, then the one with the most room.
`VOLUME_PLACE` applies only to a volume still unplaced, so an old and a new leader cannot
both place one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.errors import Conflict, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import now_rfc3339
from symphonyd.state import images, nodes, volumes
from symphonyd.state.fit import Fit, best, volumes_committed
from symphonyd.state.store import Store

log = logging.getLogger("symphonyd.scheduler")

PLACE_PATIENCE = 15.0  # seconds a volume may wait for a place before it fails


LeaderView = Callable[[], Awaitable[set[str] | None]]


async def placement_nodes(
    cluster: Cluster, self_name: str, leader_view: LeaderView | None
) -> set[str]:
    """The members a placement asked on this node may use: those the leader reaches. On
    the leader, its own links; on a follower, the leader's answer (`leader_view`), since
    a follower's links are not the leader's (its link to a member that just joined may
    not be up yet, which says nothing of that member), or its own links when the leader
    does not answer."""
    if leader_view is not None and not cluster.is_leader():
        seen = await leader_view()
        if seen is not None:
            return seen | {self_name}
    return reachable_nodes(cluster, self_name)


def reachable_nodes(cluster: Cluster, self_name: str) -> set[str]:
    """Members this node has a live Raft connection to, and itself."""
    peers = cluster.status().get("peers", {})
    with cluster.store.lock:
        members = list(nodes.all_nodes(cluster.store))
    return {
        m["name"]
        for m in members
        if m["name"] == self_name or peers.get(m["raft_addr"], {}).get("connected", False)
    }


# -- volumes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRequest:
    size: int
    holders: frozenset[str]  # nodes holding the volume's image, if it has one
    node: str | None
    pool: str | None


def _volume_room(service: Mapping[str, Any], committed: Mapping[str, Any]) -> int:
    capacity = service.get("capacity") or {}
    return int(capacity.get("free", 0)) - int(committed.get(service["id"], 0))


def _volume_filter(
    service: Mapping[str, Any], request: VolumeRequest, committed: Mapping[str, Any]
) -> str | None:
    if request.node is not None and service["node"] != request.node:
        return "another node"
    if request.pool is not None and service["pool"] != request.pool:
        return "another pool"
    if _volume_room(service, committed) < request.size:
        return "no room"
    return None


def _volume_score(
    service: Mapping[str, Any], request: VolumeRequest, committed: Mapping[str, Any]
) -> tuple[Any, ...]:
    """The image's holders first (no fetch), then the most room."""
    return (service["node"] not in request.holders, -_volume_room(service, committed))


def _volume_nothing(request: VolumeRequest) -> str:
    where = f" on node {request.node}" if request.node else ""
    in_pool = f" in pool {request.pool}" if request.pool else ""
    return (
        f"no healthy, reachable block service{where}{in_pool} has {request.size} bytes free "
        "(see `symphonyd service list`)"
    )


VOLUME_FIT: Fit[VolumeRequest] = Fit(
    kind="volume",
    service_type="block",
    committed=volumes_committed,
    filter=_volume_filter,
    score=_volume_score,
    nothing=_volume_nothing,
)


def choose(
    store: Store,
    reachable: set[str],
    size: int,
    image_id: str | None,
    node: str | None,
    pool: str | None,
) -> dict[str, Any]:
    """The block service for a volume of `size` bytes (call with the store locked). The
    volume being placed is unplaced, so it does not count against itself."""
    if node is not None and nodes.get(store, node) is None:
        raise NotFound(f"no node named {node!r}")
    image = images.get(store, image_id) if image_id else None
    holders = frozenset(image["holders"]) if image else frozenset()
    return best(store, reachable, VOLUME_FIT, VolumeRequest(size, holders, node, pool))


async def schedule(cluster: Cluster, self_name: str, first_tried: dict[str, float]) -> bool:
    """Place every unplaced pending volume (the leader's job). One that finds no place is
    tried again for `PLACE_PATIENCE` seconds (a new leader may not have reached every peer
    yet), then failed with the reason. True while some volume waits for another try."""
    now = time.monotonic()
    waiting = False
    reachable = reachable_nodes(cluster, self_name)
    store = cluster.store
    with store.lock:
        unplaced = [
            dict(v)
            for v in volumes.all_volumes(store)
            if v["node"] is None and v["status"] == "pending"
        ]
    for volume in unplaced:
        wish = volume.get("placement") or {}
        try:
            with store.lock:
                service = choose(
                    store,
                    reachable,
                    volume["size"],
                    volume["image_id"],
                    wish.get("node"),
                    wish.get("pool"),
                )
        except SymphonyError as exc:
            if now - first_tried.setdefault(volume["id"], now) < PLACE_PATIENCE:
                waiting = True
                continue
            first_tried.pop(volume["id"], None)
            await _fail(cluster, volume["id"], exc.message)
            continue
        first_tried.pop(volume["id"], None)
        body = {
            "id": volume["id"],
            "node": service["node"],
            "service_id": service["id"],
            "pool": service["pool"],
        }
        try:
            await cluster.propose_ok(Entry(EntryType.VOLUME_PLACE, body))
        except Conflict:
            continue  # placed or changed meanwhile
        log.info(
            "volume %s placed on %s",
            volume["id"],
            service["node"],
            extra={"resource": volume["id"]},
        )
    return waiting


async def place_volumes(cluster: Cluster, self_name: str) -> None:
    """The leader's placement loop: place what waits, after every change of the tables a
    placement depends on (and every second while a volume waits for a place)."""
    first_tried: dict[str, float] = {}
    while True:
        seen = cluster.store.revision
        try:
            waiting = await schedule(cluster, self_name, first_tried)
        except (SymphonyError, OSError) as exc:
            log.warning("placement: %s", exc)
            waiting = True
        await cluster.wait_for_tables(
            {"volumes", "services", "nodes", "images"}, seen, 1.0 if waiting else 30.0
        )


async def _fail(cluster: Cluster, volume_id: str, message: str) -> None:
    fields = {"status": "failed", "status_message": message, "updated_at": now_rfc3339()}
    body = {"id": volume_id, "fields": fields, "expect_status": "pending"}
    with contextlib.suppress(Conflict):  # deleted or changed meanwhile
        await cluster.propose_ok(Entry(EntryType.VOLUME_UPDATE, body))
