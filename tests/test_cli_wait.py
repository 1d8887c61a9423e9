"""The CLI's wait (symphonyd/cli/wait.py) against a real one-node cluster: commands without
`--no-wait` return once the record is done, following the events stream; when the stream
answers 410, breaks, or starts late, the command still finishes by re-reading the record.

The faults are made by a proxy on a unix socket between the CLI and the node's control
socket (`--socket-path`), which answers, cuts or delays the `GET /v1/events` connections
and forwards everything else."""

from __future__ import annotations

import json
import select
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet

pytestmark = pytest.mark.cluster

GONE = (
    b"HTTP/1.1 410 Gone\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
)


class EventsProxy:
    """Forwards a unix socket to the node's control socket; `mode` decides what happens to
    events requests: "pass", "gone" (410 for every `since=`), "cut" (the answer's headers
    go through, then the connection is closed) or "late" (forwarded after `delay` s)."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path, self.upstream = str(path), upstream
        self.mode, self.delay = "pass", 1.5
        self.requests: list[tuple[str, str]] = []  # (request line, what was done)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.stopping.set()
        for thread in list(self.threads):
            thread.join(timeout=10)
        self.listener.close()

    def lines(self, action: str | None = None) -> list[str]:
        return [line for line, done in self.requests if action is None or done == action]

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
            head = self._read_head(conn)
            if head is None:
                return
            line = head.split(b"\r\n", 1)[0].decode()
            action = self.mode if " /v1/events" in line else "pass"
            if action == "gone" and "since=" not in line:
                action = "pass"  # from now on: what a real node always serves
            self.requests.append((line, action))
            if action == "gone":
                body = json.dumps({"error": {"code": "gone", "message": "history gone"}})
                conn.sendall(GONE % (len(body), body.encode()))
                return
            if action == "late":
                self.stopping.wait(self.delay)
            up.settimeout(0.2)
            up.connect(self.upstream)
            up.sendall(head)
            self._pump(conn, up, cut=action == "cut")

    def _read_head(self, conn: socket.socket) -> bytes | None:
        data = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return None
            data += chunk
        return data if b"\r\n\r\n" in data else None

    def _pump(self, conn: socket.socket, up: socket.socket, *, cut: bool) -> None:
        """Both ways until either side closes (or the proxy stops); `cut`: close once the
        answer's headers went through."""
        answered = b""
        while not self.stopping.is_set():
            ready, _, _ = select.select([conn, up], [], [], 0.2)
            for src in ready:
                dst = up if src is conn else conn
                try:
                    chunk = src.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                if cut and src is up:
                    answered += chunk
                    if b"\r\n\r\n" in answered:
                        dst.sendall(answered.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                        return
                    continue
                dst.sendall(chunk)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSet]:
    nodes = NodeSet(tmp_path_factory.mktemp("wait"))
    try:
        (node,) = nodes.form(1)
        assert node.cli("service", "new").returncode == 0
        yield nodes
    finally:
        nodes.cleanup()


@pytest.fixture
def single(cluster: NodeSet) -> NodeProcess:
    return cluster.nodes[0]


@pytest.fixture
def nodes_token(cluster: NodeSet) -> str:
    assert cluster.admin_token
    return str(cluster.admin_token)


@pytest.fixture
def proxy(single: NodeProcess) -> Iterator[EventsProxy]:
    # Its own short directory: a unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sywait-") as where:
        relay = EventsProxy(Path(where) / "proxy.sock", single.socket_path)
        try:
            yield relay
        finally:
            relay.close()


def via(node: NodeProcess, proxy: EventsProxy, *args: str) -> Any:
    result = node.cli("--socket-path", proxy.path, *args, "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_create_and_rm_wait_on_the_events_stream(single: NodeProcess, proxy: EventsProxy) -> None:
    created = via(single, proxy, "volume", "create", "streamed", "--size", "8M")
    assert created["status"] == "ready" and created["actual_size"] == 8 * 1024 * 1024
    streams = proxy.lines()
    assert any(line.startswith("GET /v1/events?since=") for line in streams), streams
    assert any("table=volumes" in line for line in streams), streams

    result = single.cli("--socket-path", proxy.path, "volume", "rm", "streamed", timeout=60)
    assert result.returncode == 0 and "Deleted volume streamed." in result.stdout, result.stderr
    assert single.client().request("GET", "/v1/volumes")["volumes"] == []


def test_a_410_starts_again_from_now_and_re_reads(single: NodeProcess, proxy: EventsProxy) -> None:
    proxy.mode = "gone"
    created = via(single, proxy, "volume", "create", "after-gone", "--size", "8M")
    assert created["status"] == "ready"
    assert proxy.lines("gone"), proxy.requests
    # After the 410: a stream from now (no since), and the record read again.
    later = proxy.requests[proxy.requests.index((proxy.lines("gone")[0], "gone")) + 1 :]
    assert any(line.startswith("GET /v1/events?table=volumes") for line, _ in later), later
    assert any(line.startswith(f"GET /v1/volumes/{created['id']}") for line, _ in later), later


def test_a_broken_stream_falls_back_to_re_reading(single: NodeProcess, proxy: EventsProxy) -> None:
    proxy.mode = "cut"  # every stream breaks before its first event
    created = via(single, proxy, "volume", "create", "after-cut", "--size", "8M")
    assert created["status"] == "ready"
    assert proxy.lines("cut"), proxy.requests
    reads = [line for line in proxy.lines() if line.startswith(f"GET /v1/volumes/{created['id']}")]
    assert reads, proxy.requests
    # Each reconnection resumes from a revision, never from scratch.
    assert all("since=" in line for line in proxy.lines("cut")), proxy.requests


def test_a_change_before_the_stream_starts_is_not_missed(
    single: NodeProcess, proxy: EventsProxy
) -> None:
    """The stream opens 1.5 s late, when the volume is long ready: the replay from the
    record's revision still tells the CLI (else it would wait out its 30 minutes)."""
    proxy.mode = "late"
    created = via(single, proxy, "volume", "create", "late-stream", "--size", "8M")
    assert created["status"] == "ready"
    assert proxy.lines("late"), proxy.requests


def test_waits_over_https_with_a_token(single: NodeProcess, nodes_token: str) -> None:
    addr = ["--addr", f"https://127.0.0.1:{single.api_port}", "--token", nodes_token]
    result = single.cli(*addr, "volume", "create", "remote", "--size", "8M", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ready"
    removed = single.cli(*addr, "volume", "rm", "remote")
    assert removed.returncode == 0 and "Deleted volume remote." in removed.stdout, removed.stderr


def test_a_volume_from_an_image_on_a_terminal(single: NodeProcess, tmp_path: Path) -> None:
    """The progress bar is drawn from the record's changes, then the record is printed."""
    path = tmp_path / "base.img"
    path.write_bytes(bytes(range(256)) * 16384)  # 4 MiB
    assert single.cli("image", "new", "base", "wait-base", str(path)).returncode == 0
    code, text = single.cli_on_terminal(
        "volume", "create", "from-image", "--size", "16M", "--image", "wait-base"
    )
    assert code == 0, text
    assert "from-image" in text and "ready" in text and "Traceback" not in text
