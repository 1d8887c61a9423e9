"""The registry of service types: what a kind of cloud service (`block` today, `compute`
next) brings, so that the daemon, the API and `service new TYPE` go through one table
instead of naming each service.

A `ServiceType` gives its name and help, its driver names with the default one, how its
options are checked, how a driver is tried before a service is recorded (`probe`), and
`start`: the node-side objects of the type on one node (`RunningService`: its request
verbs, its agents, its leader-only loops and what to close). Adding a service type is
writing its own package (service.py, agent.py, driver.py, one module per backend) plus one
entry in `symphonyd.service_types.SERVICE_TYPES`.

Enabling a service on a node (`enable`) is the same for every type: settings defaults,
options checked, the driver tried, one SERVICE_CREATE entry (one service of a type per
node, checked in the store). This module knows the cluster and the store; it must not
import any service type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from symphonyd.drivers import Health
from symphonyd.errors import Invalid
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.scheduler import LeaderView
from symphonyd.security import new_id, now_rfc3339
from symphonyd.validation import check_name

__all__ = ["Agent", "Registry", "RunningService", "ServiceHost", "ServiceType"]


class Agent(Protocol):
    """What the daemon runs per node for a service: a `reconcile.Reconciler` or any loop."""

    async def run(self) -> None: ...


@dataclass(frozen=True)
class ServiceHost:
    """What a service type may use on its node (plain values and the shared services)."""

    cluster: Cluster
    node: str
    data_dir: str
    settings: Mapping[str, Any]  # the type's own settings table (`[block]`, ...)
    shared: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"images": ImageService}
    # The members the leader reaches, asked of it (None: it did not answer): placement
    # asked on a follower uses the leader's view (`scheduler.placement_nodes`).
    leader_view: LeaderView | None = None


@dataclass
class RunningService:
    """A service type started on one node."""

    verbs: Any  # the request verbs the API calls (e.g. BlockService)
    agents: list[Agent] = field(default_factory=list)
    leader_loops: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_enabled: Callable[[dict[str, Any]], Awaitable[None]] | None = None  # after `enable`
    close: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class ServiceType:
    name: str
    help: str
    drivers: tuple[str, ...]
    default_driver: str
    check_options: Callable[[str, Mapping[str, Any]], dict[str, Any]]
    probe: Callable[[str, str, str, dict[str, Any]], Health]  # (driver, pool, data_dir, options)
    start: Callable[[ServiceHost], RunningService]


class Registry:
    """The service types this daemon offers, by name."""

    def __init__(self, types: list[ServiceType]) -> None:
        self.types: dict[str, ServiceType] = {}
        for service_type in types:
            if service_type.name in self.types:
                raise ValueError(f"service type {service_type.name!r} registered twice")
            check_name(service_type.name, what="service type name")
            self.types[service_type.name] = service_type

    def names(self) -> list[str]:
        return sorted(self.types)

    def get(self, name: object) -> ServiceType:
        if not isinstance(name, str) or name not in self.types:
            raise Invalid(
                f"unknown service type {name!r} (this node offers: {', '.join(self.names())})"
            )
        return self.types[name]

    async def enable(
        self,
        host: ServiceHost,
        kind: str | None,
        driver: str | None,
        pool: str | None,
        options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Enable a service of type `kind` (default: the first registered) on this node;
        what is not given comes from the type's settings table. The driver is tried
        before anything is recorded: a service that cannot work is refused."""
        service_type = self.get(kind if kind is not None else self.names()[0])
        defaults = host.settings
        default_driver = str(defaults.get("driver", service_type.default_driver))
        driver = driver or default_driver
        if driver not in service_type.drivers:
            raise Invalid(
                f"unknown {service_type.name} driver {driver!r} "
                f"(known: {', '.join(service_type.drivers)})"
            )
        pool = pool or str(defaults.get("pool", "default"))
        if options is None:
            options = dict(defaults.get("options", {})) if driver == default_driver else {}
        options = service_type.check_options(driver, options)
        check_name(pool, what="pool name")
        checked = await asyncio.to_thread(service_type.probe, driver, pool, host.data_dir, options)
        if not checked.ok:
            raise Invalid(f"the {driver} driver cannot work here: {checked.message}")
        now = now_rfc3339()
        record: dict[str, Any] = {
            "id": new_id(),
            "node": host.node,
            "type": service_type.name,
            "driver": driver,
            "pool": pool,
            "options": options,
            "health": None,
            "capacity": None,
            "created_at": now,
            "updated_at": now,
        }
        result = await host.cluster.propose_ok(Entry(EntryType.SERVICE_CREATE, {"service": record}))
        return dict(result["service"])
