"""TCP proxies on loopback that pass, cut or silently drop traffic per link between nodes.

What it is for: a node listens on 127.0.0.N (`--bind`) and advertises 127.0.0.1, where a
proxy of this module listens on the same port and forwards to it; every connection between
nodes then goes through a proxy, which can make a network partition of it. Never anything
but 127.0.0.0/8: it refuses other addresses.

Which link a connection belongs to: the proxy accepts it from 127.0.0.1 (every node
connects from there), so it looks the other end up in the kernel's socket table
(`/proc/net/tcp`: the socket whose local port is the connection's peer port) and finds the
process holding that socket among the nodes' PIDs (`/proc/PID/fd`). Anything else (the
test process, a CLI) is the link from "client". A link is a pair of names, both
directions at once.

Modes of a link: `pass` forwards; `cut` resets (RST) every connection on it and every new
one at once; `drop` holds connections open and forwards nothing (bytes wait in the
proxy's and the kernel's buffers, as packets of a partition that drops them never
arrive), and new connections are accepted but not connected onward. Back to `pass`, held
bytes flow again (a receiver that timed the connection out has closed it meanwhile).

All proxies of a test run on one asyncio loop in one daemon thread; `close()` stops them
and every connection. Methods are called from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

CLIENT = "client"
MODES = ("pass", "cut", "drop")
CALL_TIMEOUT = 10.0


class Cut(Exception):
    """The link of this connection was cut."""


def loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address: proxies stay on 127.0.0.0/8")
    return host


def socket_owner(peer_port: int, listen_port: int, pids: dict[int, str]) -> str:
    """The name of the process (among `pids`) that holds the TCP socket connected from
    local port `peer_port` to `listen_port`, or CLIENT."""
    inode = None
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == peer_port and (
                int(remote.split(":")[1], 16) == listen_port
            ):
                inode = fields[9]
                break
    if inode is None:
        return CLIENT
    wanted = f"socket:[{inode}]"
    for pid, name in pids.items():
        folder = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(folder):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{folder}/{fd}") == wanted:
                        return name
    return CLIENT


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, not a FIN: what a cut link looks like to both ends."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)  # kept in a set, by identity
class _Connection:
    link: frozenset[str]
    ends: list[asyncio.StreamWriter] = field(default_factory=list)

    def reset(self) -> None:
        for end in self.ends:
            _reset(end)


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # reset at once: their link was cut
    by_link: dict[str, int] = field(default_factory=dict)


class ProxyHub:
    """The proxies of one test. `pids()` names the node processes running now."""

    def __init__(self, pids: Callable[[], dict[int, str]]) -> None:
        self._pids = pids
        self._modes: dict[frozenset[str], str] = {}
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._changed = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxies", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    # -- from the test's threads ----------------------------------------------------------

    def add(self, name: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        """Listen on `listen` for connections to node `name`, which listens on `upstream`."""
        loopback(listen[0])
        loopback(upstream[0])
        self._call(self._serve(name, listen, upstream))

    def set_link(self, a: str, b: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._call(self._set(frozenset((a, b)), mode))

    def heal(self) -> None:
        self._call(self._heal())

    def mode(self, a: str, b: str) -> str:
        return self._modes.get(frozenset((a, b)), "pass")

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CALL_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop ------------------------------------------------------------------------

    async def _serve(self, name: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(name, listen[1], upstream, reader, writer)

        server = await asyncio.start_server(accepted, listen[0], listen[1], reuse_address=True)
        self._servers.append(server)

    async def _set(self, link: frozenset[str], mode: str) -> None:
        if mode == "pass":
            self._modes.pop(link, None)
        else:
            self._modes[link] = mode
        if mode == "cut":
            for connection in [c for c in self._connections if c.link == link]:
                connection.reset()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _heal(self) -> None:
        self._modes.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.reset()
        self._modes.clear()
        self._changed.set()

    async def _passable(self, link: frozenset[str]) -> None:
        """Return once the link passes; raise Cut if it is cut."""
        while True:
            mode = self._modes.get(link, "pass")
            if mode == "pass":
                return
            if mode == "cut":
                raise Cut
            await self._changed.wait()

    async def _handle(
        self,
        name: str,
        listen_port: int,
        upstream: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer_port = writer.get_extra_info("peername")[1]
        source = await self._loop.run_in_executor(
            None, socket_owner, peer_port, listen_port, self._pids()
        )
        link = frozenset((source, name))
        label = f"{source}->{name}"
        connection = _Connection(link, [writer])
        self._connections.add(connection)
        self.stats.accepted += 1
        self.stats.by_link[label] = self.stats.by_link.get(label, 0) + 1
        try:
            await self._passable(link)
            up_reader, up_writer = await asyncio.open_connection(*upstream)
            connection.ends.append(up_writer)
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        except Cut:
            self.stats.refused += 1
        except OSError:
            pass
        finally:
            self._connections.discard(connection)
            cut = self._modes.get(link) == "cut"
            for end in connection.ends:
                if cut:
                    _reset(end)
                else:
                    end.close()

    async def _pump(
        self, link: frozenset[str], source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                await self._passable(link)  # a dropped link holds what it read
                sink.write(data)
                await sink.drain()
        except (OSError, Cut):
            pass
        finally:
            # one direction ended: so does the other (no half-open connections)
            sink.close()
