"""What fits where, from the replicated state alone: the generic placement every kind of
resource shares (`Fit`, `best`) and what the pending volumes of each block service will
take (`volumes_committed`).

Pure functions of the store and of a set of candidate nodes: the leader's placement loops
(`scheduler.py`, `compute/placement.py`) call them with the nodes the leader reaches, and
an entry that places as it applies (`INSTANCE_CREATE`, `state/instance_fit.py`) calls them
with the candidates written in the entry, so every node computes the same placement. They
must not read a clock, a connection or anything else outside the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from symphonyd.errors import Conflict
from symphonyd.state import nodes, services, volumes
from symphonyd.state.store import Store

__all__ = ["WAITING", "Fit", "best", "volumes_committed"]

WAITING = ("pending", "creating")  # volumes that will take space not yet allocated
Q = TypeVar("Q")  # what a kind of resource asks of a placement


@dataclass(frozen=True)
class Fit(Generic[Q]):
    """How one kind of resource is placed on services of one type.

    `committed(store)` is what each service has promised to records not yet made (by
    service id); `filter(service, request, committed)` says why a service cannot take the
    request (None: it can); `score(service, request, committed)` orders those that can
    (lowest wins; ties go to the node name); `nothing(request)` is the refusal when none
    can. Placement itself is generic (`best`): healthy services of the type, on candidate
    nodes that are not cordoned, filtered, then scored."""

    kind: str
    service_type: str
    committed: Callable[[Store], Mapping[str, Any]]
    filter: Callable[[Mapping[str, Any], Q, Mapping[str, Any]], str | None]
    score: Callable[[Mapping[str, Any], Q, Mapping[str, Any]], tuple[Any, ...]]
    nothing: Callable[[Q], str]


def best(store: Store, candidates: set[str], fit: Fit[Q], request: Q) -> dict[str, Any]:
    """The service that takes `request` among those on `candidates` (call with the store
    locked), or Conflict. The order of the store's tables does not matter: ties go to the
    node name, and a node has one service of a type."""
    committed = fit.committed(store)
    fitting = []
    for service in services.all_services(store):
        if service["type"] != fit.service_type:
            continue
        health = service.get("health") or {}
        if not health.get("ok") or service["node"] not in candidates:
            continue
        if (nodes.get(store, service["node"]) or {}).get("cordoned"):
            continue  # `node evacuate`: nothing new is placed there
        if fit.filter(service, request, committed) is not None:
            continue
        fitting.append((fit.score(service, request, committed), service["node"], dict(service)))
    if not fitting:
        raise Conflict(fit.nothing(request))
    return min(fitting, key=lambda f: f[:2])[2]


def volumes_committed(store: Store) -> dict[str, int]:
    """Bytes the volumes not made yet will take, by block service id."""
    waiting: dict[str, int] = {}
    for volume in volumes.all_volumes(store):
        if volume["status"] in WAITING and volume["service_id"]:
            waiting[volume["service_id"]] = waiting.get(volume["service_id"], 0) + volume["size"]
    return waiting
