"""The proxies alone (no symphonyd): a link passes, drops (open and silent, then flows
again) and cuts (reset), and a connection is told apart by the process that opened it."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import CLIENT, ProxyHub, loopback, socket_owner
from tests.nodes import free_port


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on 127.0.0.2 (a thread per connection, closed at the end)."""
    server = socket.create_server(("127.0.0.2", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def hub() -> Iterator[ProxyHub]:
    proxies = ProxyHub(lambda: {os.getpid(): "me"})
    try:
        yield proxies
    finally:
        proxies.close()


def test_pass_drop_and_cut(echo: int, hub: ProxyHub) -> None:
    port = free_port()
    hub.add("echo", ("127.0.0.1", port), ("127.0.0.2", echo))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"one")
        assert conn.recv(10) == b"one"
        hub.set_link("me", "echo", "drop")
        conn.sendall(b"two")
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.recv(10)
        hub.set_link("me", "echo", "pass")
        conn.settimeout(5)
        assert conn.recv(10) == b"two"
        hub.set_link("me", "echo", "cut")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            conn.sendall(b"three")
            assert conn.recv(10) == b""
            raise ConnectionResetError
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.settimeout(5)
        with pytest.raises(ConnectionResetError):
            conn.sendall(b"four")
            conn.recv(10)
    hub.heal()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"five")
        assert conn.recv(10) == b"five"
    assert hub.stats.by_link == {"me->echo": 3}
    assert hub.stats.refused >= 1


def test_owner_of_a_connection(echo: int) -> None:
    with socket.create_connection(("127.0.0.2", echo), timeout=5) as conn:
        peer_port = conn.getsockname()[1]
        assert socket_owner(peer_port, echo, {os.getpid(): "me"}) == "me"
        assert socket_owner(peer_port, echo, {1: "init"}) == CLIENT


def test_only_loopback() -> None:
    assert loopback("127.0.0.9") == "127.0.0.9"
    with pytest.raises(ValueError):
        loopback("10.0.0.1")
