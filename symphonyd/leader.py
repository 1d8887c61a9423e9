"""Leader-only loops: started when this node becomes the Raft leader, cancelled when it
steps down, driven by the Raft node's role changes (never by polling `is_leader()`).

A service registers a loop (a coroutine function) by name; on the leader each runs as its
own task, restarted after a crash with a short pause (a bug must not end the leader's
placement for good). Role changes arrive on the Raft thread and are handed to the event
loop in order, so a quick leader -> follower -> leader ends with the loops running.
It must not know any service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from symphonyd import metrics
from symphonyd.raft.cluster import Cluster

__all__ = ["LeaderLoops"]

log = logging.getLogger("symphonyd.leader")

RESTART_PAUSE = 1.0  # after a loop crashed


class LeaderLoops:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.loops: dict[str, Callable[[], Awaitable[None]]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.leading = False
        self._listening = False

    def add(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop()` while this node leads (at once if it leads now)."""
        self.loops[name] = loop
        if self.leading:
            self._start(name)

    def start(self) -> None:
        """Follow the Raft node's role from now on."""
        if not self._listening:
            self.cluster.node.role_listeners.append(self._on_role)
            self._listening = True
        self._apply("leader" if self.cluster.node.status().get("role") == "leader" else "other")

    def _on_role(self, role: str) -> None:  # the Raft thread
        with contextlib.suppress(RuntimeError):  # the event loop closed: the node is stopping
            self.cluster.loop.call_soon_threadsafe(self._apply, role)

    def _apply(self, role: str) -> None:
        leading = role == "leader"
        if leading == self.leading:
            return
        self.leading = leading
        if leading:
            log.info("leading: starting %s", ", ".join(self.loops) or "no loops")
            for name in self.loops:
                self._start(name)
        else:
            log.info("no longer leading: stopping %s", ", ".join(self.tasks) or "no loops")
            for task in self.tasks.values():
                task.cancel()
            self.tasks.clear()

    def _start(self, name: str) -> None:
        if name not in self.tasks or self.tasks[name].done():
            self.tasks[name] = asyncio.create_task(self._keep(name), name=f"leader:{name}")

    async def _keep(self, name: str) -> None:
        while True:
            try:
                await self.loops[name]()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.RECONCILE_ERRORS.labels(name).inc()
                log.exception("leader loop %s failed; restarting it", name)
            await asyncio.sleep(RESTART_PAUSE)

    async def close(self) -> None:
        if self._listening:
            with contextlib.suppress(ValueError):
                self.cluster.node.role_listeners.remove(self._on_role)
            self._listening = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.leading = False
