"""Power loss for chaos tests: a NodeSet whose every node keeps its data dir on its own
lossyfs mount (tests/chaos/lossyfs.py), and a ledger of acknowledged writes to check
after the power comes back.

What it is for: `PowerCluster.power_loss(nodes)` kills each node with SIGKILL (by PID) and
then crashes its filesystem, which drops everything the node wrote and did not sync, as
a power cut would; `power_on(nodes)` mounts the same backing dirs again and restarts the
nodes on them. `cleanup()` stops every node by its PID, then unmounts every mount by its
path and ends every filesystem process by its PID, also after a failure.

`Ledger` is one client thread writing fresh keys (`ledger/<n>`) one at a time to the nodes
that are up, remembering those acknowledged: after any number of power losses every one
of them must still be there, on every member. Bounded in count and time.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from symphonyd.errors import NotFound, SymphonyError
from tests.chaos.lossyfs import LossyMount
from tests.nodes import NodeProcess, NodeSet, wait_until

REPO = str(Path(__file__).resolve().parents[2])
LEDGER = "ledger/"


class NoSyncNode(NodeProcess):
    """A node run by tests/chaos/nosync.py: its journal skips fdatasync while `flag`
    exists (the control that shows what a missing sync costs)."""

    flag: Path

    @property
    def program(self) -> list[str]:
        return [sys.executable, "-m", "tests.chaos.nosync"]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = REPO
        env["SYMPHONYD_TEST_NOSYNC_FLAG"] = str(self.flag)
        return env


class PowerCluster(NodeSet):
    """A NodeSet on lossyfs mounts: `<base>/<name>` is the mount (the data dir),
    `<base>/<name>.disk` its backing dir; logs stay off the mounts."""

    def __init__(self, base: Path, settings: str = "", nosync: bool = False) -> None:
        super().__init__(base, settings)
        self.nosync = nosync
        self.disks: dict[str, LossyMount] = {}
        self.down: set[str] = set()
        self._lock = threading.Lock()

    def new(self, name: str, start: bool = True) -> NodeProcess:
        disk = LossyMount(
            self.base / f"{name}.disk",
            self.base / name,
            self.base / f"{name}.fs.sock",
            self.base / f"{name}.fs.log",
        )
        self.disks[name] = disk
        disk.start()
        node: NodeProcess
        if self.nosync:
            node = NoSyncNode(self.base, name, self.settings)
            assert isinstance(node, NoSyncNode)
            node.flag = self.base / "nosync"
        else:
            node = NodeProcess(self.base, name, self.settings)
        node.log_path = self.base / f"{name}.log"
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def up(self) -> list[NodeProcess]:
        with self._lock:
            return [n for n in self.nodes if n.name not in self.down]

    def power_loss(self, nodes: list[NodeProcess], keep: float = 0.0, seed: int = 0) -> list[Any]:
        """SIGKILL each node, then crash each node's filesystem (what was not synced is
        gone; with `keep`, a share of it is left behind, unsynced). Returns what each
        filesystem held unsynced when it crashed."""
        with self._lock:
            self.down.update(n.name for n in nodes)
        for node in nodes:
            node.kill()
        return [self.disks[n.name].crash(keep, seed + i) for i, n in enumerate(nodes)]

    def power_on(self, nodes: list[NodeProcess]) -> None:
        for node in nodes:
            self.disks[node.name].start()
        for node in nodes:
            node.start()
            with self._lock:
                self.down.discard(node.name)

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            for disk in self.disks.values():
                disk.cleanup()


def local_keys(node: NodeProcess, prefix: str) -> dict[str, Any]:
    """The node's own copy of the keys under `prefix` (a local read, no barrier):
    key -> (value, ModifyIndex)."""
    try:
        found = node.client(timeout=10).request("GET", f"/v1/kv/{prefix}", query={"recurse": ""})
    except NotFound:
        return {}
    return {e["Key"]: (e["Value"], e["ModifyIndex"]) for e in found}


class Ledger:
    """Writes `ledger/<n>` one at a time to a node that is up; `acked` holds the keys
    whose write was acknowledged."""

    def __init__(self, cluster: PowerCluster, seed: int = 0, timeout: float = 5.0) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.acked: list[str] = []
        self.attempted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, max_seconds: float, max_writes: int = 20_000) -> None:
        deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(
            target=self._run, args=(deadline, max_writes), name="ledger", daemon=True
        )
        self._thread.start()

    def _run(self, deadline: float, max_writes: int) -> None:
        for n in range(max_writes):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            nodes = self.cluster.up()
            if not nodes:
                time.sleep(0.05)
                continue
            key = f"{LEDGER}{n:06d}"
            self.attempted += 1
            with contextlib.suppress(SymphonyError, OSError):
                client = self.rng.choice(nodes).client(timeout=self.timeout)
                client.request("PUT", f"/v1/kv/{key}", raw=os.urandom(8).hex().encode())
                self.acked.append(key)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 30)
            if self._thread.is_alive():
                raise AssertionError("the ledger's thread did not stop")

    def wait_for(self, count: int, timeout: float) -> None:
        """Until `count` writes are acknowledged (bounded by `timeout`)."""
        wait_until(lambda: len(self.acked) >= count, timeout, f"{count} acknowledged writes")

    def missing(self, node: NodeProcess) -> list[str]:
        """Acknowledged keys the node does not hold."""
        held = local_keys(node, LEDGER)
        return [k for k in self.acked if k not in held]
