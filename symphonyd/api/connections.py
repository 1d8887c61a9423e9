"""Connections to the API that cost nothing to open and would stay open forever, bounded.

aiohttp closes an idle keep-alive connection after `keepalive_timeout` (75 s here), and
asyncio a TLS handshake that does not finish within 60 s; but a connection that never
completes its first request's headers (slowloris: a header line every few seconds, or a
TLS connection that then sends nothing) has no timer at all, and there is no bound on how
many are open. `ConnectionGuard`:

* closes a connection whose first request did not arrive within `header_timeout` seconds
  of its opening (a request counts once its headers are read: the middleware sees it);
* closes at once a connection opened while `max_connections` are open, or while a
  quarter of that are open from the same address, unless it comes from a member's
  address (members call each other: transfers, consoles, joins), so one client cannot
  lock everyone out by holding kept-alive connections;

over TCP only: the local control socket (root on the host) is never limited, so the
operator can still act while the network port is crowded. Each kind is logged
with one warning line per sweep, never one per connection. It uses aiohttp's
public `Server.connections` and `RequestHandler.force_close`, and wraps the server's
`connection_made` on the instance. It must not know the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from symphonyd.api.routes import Handler

__all__ = ["CONNECTIONS", "ConnectionGuard"]

log = logging.getLogger("symphonyd.api")

SWEEP_EVERY = 1.0  # s between looks at the open connections


class ConnectionGuard:
    def __init__(
        self,
        header_timeout: float,
        max_connections: int,
        members: Callable[[], set[str]] = set,
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.per_address = max(1, max_connections // 4)
        self.members = members  # the members' addresses: never refused
        self._opened: dict[Any, float] = {}  # handler -> loop time it opened, until served
        self._tcp: set[Any] = set()  # the TCP connections open (handlers)
        self._address: dict[Any, str] = {}  # their peers' addresses
        self._refused = 0
        self._server: web.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, server: web.Server) -> None:
        """Watch the connections of `server` (call once its runner is set up)."""
        self._server = server
        made = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                return  # the control socket
            self._tcp &= set(server.connections)
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) else "?"
            same = sum(1 for h in self._tcp if self._address.get(h) == address)
            crowded = len(self._tcp) >= self.max_connections or same >= self.per_address
            if crowded and address not in self.members():
                self._refused += 1
                handler.force_close()
                transport.close()
                return
            self._tcp.add(handler)
            self._address[handler] = address
            self._opened[handler] = asyncio.get_running_loop().time()

        server.connection_made = connection_made  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._opened.pop(request.protocol, None)  # its headers came: keep-alive rules now
        return await handler(request)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            assert self._server is not None
            open_now = set(self._server.connections)
            late = []
            for handler in [h for h in self._address if h not in open_now]:
                del self._address[handler]
            for handler, opened in list(self._opened.items()):
                if handler not in open_now:
                    del self._opened[handler]
                elif loop.time() - opened > self.header_timeout:
                    late.append(handler)
            for handler in late:
                del self._opened[handler]
                handler.force_close()
            if late:
                log.warning(
                    "closed %d connections that sent no request within %g s",
                    len(late),
                    self.header_timeout,
                )
            if self._refused:
                log.warning(
                    "refused %d connections: %d open in all, or %d from one address "
                    "(api.max_connections)",
                    self._refused,
                    self.max_connections,
                    self.per_address,
                )
                self._refused = 0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


CONNECTIONS: web.AppKey[ConnectionGuard] = web.AppKey("connections", ConnectionGuard)
