"""The `block` service type's registry entry: what it brings to a node (its verbs, the
volume and LVM agents, its health reports, the leader's volume placement)."""

from __future__ import annotations

from typing import Any

from symphonyd import scheduler
from symphonyd.block.agent import VolumeAgent
from symphonyd.block.driver import DRIVER_OPTIONS, check_options, make_driver
from symphonyd.block.lvm_agent import LvmAgent
from symphonyd.block.service import BlockService
from symphonyd.drivers import Health
from symphonyd.services import RunningService, ServiceHost, ServiceType

__all__ = ["BLOCK"]


def _probe(driver: str, pool: str, data_dir: str, options: dict[str, Any]) -> Health:
    return make_driver(driver, pool, data_dir, **options).check()


def _start(host: ServiceHost) -> RunningService:
    images = host.shared["images"]
    verbs = BlockService(
        host.cluster, images, host.node, host.data_dir, dict(host.settings), host.leader_view
    )
    cluster, node = host.cluster, host.node
    return RunningService(
        verbs=verbs,
        agents=[
            VolumeAgent(cluster, node, verbs.drivers, images, host.shared["progress"]),
            LvmAgent(cluster, node, verbs.lvm),
        ],
        background=[verbs.run_health],
        leader_loops={"volume placement": lambda: scheduler.place_volumes(cluster, node)},
        on_enabled=lambda _record: verbs.report_health(),
    )


BLOCK = ServiceType(
    name="block",
    help="block volumes on plain files or LVM",
    drivers=tuple(sorted(DRIVER_OPTIONS)),
    default_driver="file",
    check_options=check_options,
    probe=_probe,
    start=_start,
)
