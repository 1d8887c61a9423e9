"""Faults for chaos runs: kill -9 and restart, SIGSTOP/SIGCONT, and network partitions
through the proxies of tests/chaos/proxy.py, on a cluster of real symphonyd processes.

What it is for: `ChaosCluster` is a NodeSet whose nodes listen on 127.0.0.(10+i) and
advertise 127.0.0.1, where a proxy per node and port (Raft and API) forwards to them;
`Nemesis` applies one fault at a time, records it, and heals it. A fault hits a group of
nodes named by a role: the `leader`, a `follower`, a `majority` (the leader and enough
followers to make one: killing it stops the cluster), a `minority` holding the leader (a
partition of it is the majority/minority split: on 5 nodes, the leader and one follower
against three), or `all` (kill -9 of every node, then all restarted: a whole-cluster
crash). Signals go to a node's own PID, never by name. `ChaosCluster.cleanup()` resumes paused
nodes, stops every node by its PID and closes the proxies, also after a failure.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.proxy import ProxyHub
from tests.nodes import NodeProcess, NodeSet, wait_until

FAULT_KINDS = ("kill", "pause", "partition-drop", "partition-cut")
ROLES = ("leader", "follower", "majority", "minority", "all")


class ChaosCluster(NodeSet):
    """A NodeSet whose every link between nodes goes through a proxy."""

    def __init__(self, base: Path, settings: str = "") -> None:
        super().__init__(base, settings)
        self.proxies = ProxyHub(self.pids)

    def pids(self) -> dict[int, str]:
        return {
            n.proc.pid: n.name for n in self.nodes if n.proc is not None and n.proc.poll() is None
        }

    def new(self, name: str, start: bool = True) -> NodeProcess:
        node = super().new(name, start=False)
        node.bind = f"127.0.0.{10 + len(self.nodes)}"
        for port in (node.raft_port, node.api_port):
            self.proxies.add(name, ("127.0.0.1", port), (node.bind, port))
        if start:
            node.start()
        return node

    def cleanup(self) -> None:
        try:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is None:
                    os.kill(node.proc.pid, signal.SIGCONT)  # a paused node cannot stop
            super().cleanup()
        finally:
            self.proxies.close()


@dataclass
class Fault:
    kind: str  # one of FAULT_KINDS
    node: str  # the names of the nodes hit, joined by "+"
    role: str  # one of ROLES: what the nodes were when hit
    start: float  # time.monotonic()
    healed: float = 0.0


class Nemesis:
    """One fault at a time on `members`; `down` and `paused` say which nodes are hit."""

    def __init__(self, cluster: ChaosCluster, members: list[NodeProcess], seed: int = 0) -> None:
        self.cluster = cluster
        self.members = members
        self.rng = random.Random(seed)
        self.down: set[str] = set()
        self.paused: set[str] = set()
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def reachable(self) -> list[NodeProcess]:
        """Nodes a client may send to: running (a paused one included: it hangs)."""
        with self._lock:
            return [n for n in self.members if n.name not in self.down]

    def answering(self) -> list[NodeProcess]:
        with self._lock:
            return [n for n in self.members if n.name not in self.down | self.paused]

    def leader(self) -> NodeProcess:
        return self.cluster.leader(among=self.answering())

    def pick(self, role: str) -> list[NodeProcess]:
        """The nodes a fault of `role` hits, the leader first where it is one of them."""
        if role == "all":
            return list(self.members)
        leader = self.leader()
        followers = [n for n in self.answering() if n is not leader]
        size = {
            "leader": 1,
            "follower": 1,
            "majority": len(self.members) // 2 + 1,
            "minority": (len(self.members) - 1) // 2,
        }.get(role)
        if size is None:
            raise ValueError(f"unknown role {role}: one of {ROLES}")
        if role == "follower":
            return [self.rng.choice(followers)]
        return [leader, *self.rng.sample(followers, size - 1)]

    # -- one fault: hit, hold, heal ---------------------------------------------------------

    def inject(self, kind: str, role: str, hold: float) -> Fault:
        group = self.pick(role)
        fault = Fault(kind, "+".join(n.name for n in group), role, time.monotonic())
        self.faults.append(fault)
        try:
            self._hit(kind, group)
            time.sleep(hold)
        finally:
            self._heal(kind, group)
            fault.healed = time.monotonic()
        return fault

    def _hit(self, kind: str, group: list[NodeProcess]) -> None:
        if kind == "kill":
            for node in group:
                with self._lock:
                    self.down.add(node.name)
                node.kill()
        elif kind == "pause":
            for node in group:
                assert node.proc is not None
                with self._lock:
                    self.paused.add(node.name)
                os.kill(node.proc.pid, signal.SIGSTOP)
        elif kind.startswith("partition-"):
            mode = kind.removeprefix("partition-")
            whole = len(group) == len(self.members)  # every node cut off from every other
            for node in group:
                for other in self.members:
                    if other is not node and (whole or other not in group):
                        self.cluster.proxies.set_link(node.name, other.name, mode)
        else:
            raise ValueError(f"unknown fault {kind}")

    def _heal(self, kind: str, group: list[NodeProcess]) -> None:
        if kind == "kill":
            for node in group:
                node.start()
                with self._lock:
                    self.down.discard(node.name)
        elif kind == "pause":
            for node in group:
                assert node.proc is not None
                os.kill(node.proc.pid, signal.SIGCONT)
                with self._lock:
                    self.paused.discard(node.name)
        else:
            self.cluster.proxies.heal()

    def heal_all(self) -> None:
        """Everything back: resumed, restarted, links passing; then a leader."""
        for node in self.members:
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)
            elif node.name in self.down or node.proc is None or node.proc.poll() is not None:
                node.start()
        self.cluster.proxies.heal()
        with self._lock:
            self.down.clear()
            self.paused.clear()
        self.leader()

    def settle(self, timeout: float = 60.0) -> int:
        """Wait until every member has applied the same revision and it holds still; the
        revision."""
        seen: list[object] = [None, time.monotonic()]

        def same() -> int | None:
            revisions = {n.status()["revision"] for n in self.members}
            if len(revisions) != 1:
                seen[:] = [None, time.monotonic()]
                return None
            (revision,) = revisions
            if revision != seen[0]:
                seen[:] = [revision, time.monotonic()]
                return None
            return int(revision) if time.monotonic() - float(str(seen[1])) >= 1.0 else None

        return int(wait_until(same, timeout, "every member at the same revision", interval=0.2))
