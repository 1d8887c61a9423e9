"""What an instance takes and where it fits, from the replicated state alone, and the
placement an `INSTANCE_CREATE` entry makes as it applies.

A node can take an instance when it has a healthy compute service and a healthy block
service, enough vCPUs and memory free (its capacity times the cluster's overcommit ratios
`compute.cpu_overcommit` and `compute.memory_overcommit`, minus what the instances placed
there take) and room in its block pool for the root disk. Among those, a node holding the
instance's image wins (no fetch), then the least loaded (`INSTANCE_FIT`).

Placed as it is recorded: the create entry carries the candidate nodes (those the node
that took the request reaches) and the id of the root volume; applying it chooses among
the candidates with the state as it is at that point of the log, so every node makes the
same choice and a burst of creates spreads over the nodes as if placed one by one. The
instance is then `creating` on its node with its root volume `creating` beside it, in the
same step: nobody needs to claim either. One that fits nowhere at that point is recorded
unplaced and `pending`, for the leader's loop (`compute/placement.py`). Pure: no clock, no
connection, nothing outside the store and the entry.

This code is part of the replicated state machine: every node, and a node replaying old
entries after an upgrade, must place exactly as the others did. Changing what `fits`,
`_score`, `_committed` or `fit.best` decide for an `INSTANCE_CREATE` therefore needs a new
body version of that entry (the old version kept deciding the old way), never a change in
place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.errors import Conflict
from symphonyd.state import cluster as cluster_table
from symphonyd.state import images, instances, services, volumes
from symphonyd.state.fit import Fit, best, volumes_committed
from symphonyd.state.store import Store

__all__ = [
    "INSTANCE_FIT",
    "InstanceRequest",
    "fits",
    "place_new",
    "request_for",
    "root_volume",
]

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
        "block_committed": volumes_committed(store),
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


def fits(
    service: Mapping[str, Any], request: InstanceRequest, committed: Mapping[str, Any]
) -> str | None:
    """Why `service` cannot take `request` (None: it can)."""
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


INSTANCE_FIT: Fit[InstanceRequest] = Fit(
    kind="instance",
    service_type="compute",
    committed=_committed,
    filter=fits,
    score=_score,
    nothing=_nothing,
)


def request_for(store: Store, record: Mapping[str, Any]) -> InstanceRequest:
    """What an instance record asks of a node (its root disk included)."""
    image = images.get(store, record["image_id"]) if record.get("image_id") else None
    return InstanceRequest(
        cpus=record["cpus"],
        memory=record["memory"],
        disk=record["disk"],
        holders=frozenset(image["holders"]) if image else frozenset(),
        node=(record.get("placement") or {}).get("node"),
    )


def root_volume(
    record: Mapping[str, Any], block: Mapping[str, Any], volume_id: str, now: str, status: str
) -> dict[str, Any]:
    """The root volume record of an instance placed on `block`'s node: made from its image,
    in the node's block pool, named after the instance."""
    return {
        "id": volume_id,
        "name": f"{record['name']}-root",
        "node": block["node"],
        "placement": {"node": block["node"], "pool": block["pool"]},
        "service_id": block["id"],
        "pool": block["pool"],
        "size": record["disk"],
        "image_id": record["image_id"],
        "overlay": False,
        "status": status,
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


def place_new(
    store: Store, record: Mapping[str, Any], candidates: set[str], volume_id: str
) -> dict[str, Any] | None:
    """Place a just-recorded instance on the best of `candidates` with its root volume,
    both `creating` (the instance and the volume as stored), or None when none fits now
    (it stays unplaced and `pending` for the leader)."""
    try:
        service = best(store, candidates, INSTANCE_FIT, request_for(store, record))
    except Conflict:
        return None
    block = services.on_node(store, service["node"], "block")
    if block is None:
        return None
    volume = root_volume(record, block, volume_id, record["created_at"], "creating")
    made = volumes.create(store, volume)
    if not made["ok"]:
        return None  # a volume of that name came first: the leader's loop says so
    fields = {
        "node": service["node"],
        "service_id": service["id"],
        "root_volume_id": volume_id,
        "status": "creating",
    }
    placed = instances.update(store, record["id"], fields)
    return {"instance": placed["instance"], "volume": made["volume"]}
