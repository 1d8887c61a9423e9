"""The domain an instance record asks for, made on this node: its disks (from the block
pools), its cloud-init seed and its definition, with what the definition holds.

The compute agent (`compute/agent.py`) decides when; this module knows how. The blocking
methods run on a worker thread (`reconcile.run_blocking`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.block.service import PoolDrivers
from symphonyd.compute import cloudinit
from symphonyd.compute.decide import disk_targets
from symphonyd.compute.driver import DiskSpec, DomainInfo, DomainSpec
from symphonyd.compute.service import ComputeDrivers, instance_dir
from symphonyd.drivers import Reverter
from symphonyd.errors import SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.reconcile import GiveUp
from symphonyd.state import services


@dataclass(frozen=True)
class OwnedInstance:
    """An instance record of this node with its compute service and root volume."""

    instance: dict[str, Any]
    service: dict[str, Any]
    root: dict[str, Any] | None  # the root volume record (None: not made, or gone)
    data: tuple[dict[str, Any], ...] = ()  # attached data volume records
    copies: tuple[dict[str, Any], ...] = ()  # a move's copies of its volumes


def applied_by(record: OwnedInstance) -> dict[str, Any]:
    """What a definition made from the record holds."""
    instance = record.instance
    targets = disk_targets(len(record.data))
    return {
        "cpus": instance["cpus"],
        "memory": instance["memory"],
        "volumes": {v["id"]: t for v, t in zip(record.data, targets, strict=True)},
    }


class DomainMaker:
    """Builds the domains of one node's instances."""

    def __init__(self, cluster: Cluster, node: str, data_dir: str, drivers: ComputeDrivers):
        self.cluster = cluster
        self.node = node
        self.data_dir = data_dir
        self.drivers = drivers
        self.pools = PoolDrivers(data_dir)

    def disk(self, volume: Mapping[str, Any], target: str) -> DiskSpec:
        with self.cluster.store.lock:
            block = services.get(self.cluster.store, volume["service_id"] or "")
        if block is None or block["node"] != self.node:
            raise GiveUp(f"volume {volume['name']} is not on node {self.node}")
        found = self.pools.get(dict(block), volume["pool"]).volumes().get(volume["id"])
        if found is None:
            raise GiveUp(f"volume {volume['name']} is not in its pool")
        return DiskSpec(found.path, found.format, target, volume["id"][:20])

    def spec(self, record: OwnedInstance) -> DomainSpec:
        """The domain an instance record asks for (blocking: lists the volumes' pools)."""
        instance = record.instance
        if record.root is None:
            raise GiveUp("its root volume is gone")
        disks = [self.disk(record.root, "vda")]
        for volume, target in zip(record.data, disk_targets(len(record.data)), strict=True):
            disks.append(self.disk(volume, target))
        folder = instance_dir(self.data_dir, instance["id"])
        return DomainSpec(
            instance_id=instance["id"],
            name=instance["name"],
            vcpus=instance["cpus"],
            memory=instance["memory"],
            disks=tuple(disks),
            console_log=os.path.join(folder, "console.log"),
            seed=self.seed_path(instance["id"]),
            network=instance["network"],
        )

    def seed_path(self, instance_id: str) -> str:
        return os.path.join(instance_dir(self.data_dir, instance_id), "seed.iso")

    def write_seed(self, instance: Mapping[str, Any]) -> None:
        folder = instance_dir(self.data_dir, instance["id"])
        os.makedirs(folder, mode=0o711, exist_ok=True)  # qemu (another user) opens the seed
        os.chmod(folder, 0o711)
        cloudinit.build_seed(
            self.seed_path(instance["id"]),
            instance["id"],
            instance["name"],
            instance["user_data"],
            instance.get("network_config"),
        )

    def make(self, record: OwnedInstance, boot: bool) -> tuple[DomainInfo, str | None]:
        """(blocking, one thread hop) The seed, the definition and, with `boot`, the start:
        the domain as defined and why the start failed (None: it did not). Found defined
        already (the node stopped before recording it), it is defined again and started
        only if it is not running."""
        instance = record.instance
        driver = self.drivers.get(record.service)
        folder = instance_dir(self.data_dir, instance["id"])
        try:
            with Reverter() as undo:
                if not os.path.exists(folder):
                    undo.add(shutil.rmtree, folder, True)
                spec = self.spec(record)
                if not os.path.exists(self.seed_path(instance["id"])):  # written meanwhile
                    self.write_seed(instance)
                info = driver.define(spec)
                undo.keep()
        except Exception:
            # The seed was written before (while the root volume was made): it goes too,
            # unless a domain of this instance exists (an earlier try's, maybe running).
            with contextlib.suppress(SymphonyError, OSError):
                if instance["id"] not in {d.instance_id for d in driver.domains()}:
                    shutil.rmtree(folder, True)
            raise
        if not boot or info.state in ("running", "paused"):
            return info, None
        try:
            driver.start(instance["id"])
        except (SymphonyError, OSError) as exc:
            return info, getattr(exc, "message", None) or str(exc)
        return info, None
