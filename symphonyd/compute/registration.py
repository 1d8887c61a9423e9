"""The `compute` service type's registry entry: what it brings to a node (its verbs, the
compute agent, its health reports, the leader's instance placement)."""

from __future__ import annotations

import contextlib
from typing import Any

from symphonyd.compute import placement
from symphonyd.compute.agent import ComputeAgent
from symphonyd.compute.driver import DRIVER_OPTIONS, check_options
from symphonyd.compute.service import ComputeDrivers, ComputeService, make_driver
from symphonyd.drivers import Health
from symphonyd.errors import SymphonyError
from symphonyd.services import RunningService, ServiceHost, ServiceType

__all__ = ["COMPUTE"]


def _probe(driver: str, pool: str, data_dir: str, options: dict[str, Any]) -> Health:
    """Open the driver once and check it (a host without libvirt0 says so here)."""
    try:
        opened = make_driver(driver, data_dir, options)
    except SymphonyError as exc:
        return Health(False, exc.message)
    try:
        return opened.check()
    finally:
        with contextlib.suppress(SymphonyError):  # closing what never opened may fail too
            opened.close()


def _start(host: ServiceHost) -> RunningService:
    drivers = ComputeDrivers(host.data_dir)
    cluster, node = host.cluster, host.node
    images = host.shared["images"]
    verbs = ComputeService(cluster, images, node, host.data_dir, drivers, host.leader_view)
    return RunningService(
        verbs=verbs,
        agents=[ComputeAgent(cluster, node, host.data_dir, drivers)],
        background=[verbs.run_health],
        leader_loops={"instance placement": lambda: placement.place_instances(cluster, node)},
        on_enabled=lambda _record: verbs.report_health(),
    )


COMPUTE = ServiceType(
    name="compute",
    help="virtual machine instances on libvirt",
    drivers=tuple(sorted(DRIVER_OPTIONS)),
    default_driver="libvirt",
    check_options=check_options,
    probe=_probe,
    start=_start,
)
