"""Real symphonyd processes for tests: start, stop, kill -9 and clean up by PID.

Every process a test starts is registered with a `NodeSet`; its teardown stops each by its
own PID (SIGTERM, then SIGKILL), also when the test failed. Nodes listen on 127.0.0.1 with
ports picked free by the kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from symphonyd.client import Client, local_fingerprint
from symphonyd.errors import SymphonyError

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value (bounded in time); return that value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except (SymphonyError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def run_json(node: NodeProcess, *args: str, timeout: float = 120.0) -> Any:
    """A CLI command with --json on `node`: it must succeed; its output, parsed."""
    result = node.cli(*args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class NodeProcess:
    """One `symphonyd run` process with its own data dir and ports."""

    def __init__(self, base: Path, name: str, settings: str = "") -> None:
        self.name = name
        self.settings = settings  # TOML text of a settings file, if any
        self.data_dir = base / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.raft_port = free_port()
        while self.raft_port == self.api_port:  # the OS may hand out a port twice
            self.raft_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # Listen here instead of 127.0.0.1 (which stays the advertised address): a proxy
        # in the test process can then listen on 127.0.0.1 with the same ports.
        self.bind: str | None = None
        self.log_path = self.data_dir / "daemon.log"

    @property
    def program(self) -> list[str]:
        """How to run symphonyd (a benchmark may run a variant instead)."""
        return [sys.executable, "-m", "symphonyd"]

    def environment(self) -> dict[str, str]:
        """The environment of the processes this node runs."""
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    @property
    def socket_path(self) -> str:
        return str(self.data_dir / "control.sock")

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def start(self, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        env = self.environment()
        config = os.devnull
        if self.settings:
            config = str(self.data_dir / "symphonyd.toml")
            Path(config).write_text(self.settings)
        self.proc = subprocess.Popen(
            [
                *self.program,
                "--data-dir",
                str(self.data_dir),
                "run",
                "--name",
                self.name,
                "--address",
                "127.0.0.1",
                "--api-port",
                str(self.api_port),
                "--raft-port",
                str(self.raft_port),
                "--config",
                config,
                *(["--bind", self.bind] if self.bind else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        if wait:
            wait_until(self._answers, START_TIMEOUT, f"{self.name} to serve its socket")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return bool(self.client(timeout=2).request("GET", "/v1/health"))

    def client(self, timeout: float = 30.0) -> Client:
        return Client(socket_path=self.socket_path, timeout=timeout)

    def https(self, token: str | None, timeout: float = 30.0) -> Client:
        return Client(
            addr=f"https://127.0.0.1:{self.api_port}",
            token=token,
            fingerprint=local_fingerprint(str(self.data_dir)),
            timeout=timeout,
        )

    def cli(
        self, *args: str, timeout: float = 60.0, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.program, "--data-dir", str(self.data_dir), *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input.decode() if input is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def cli_on_terminal(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run the CLI with a pseudo-terminal as stdin, stdout and stderr, as a person would;
        returns the exit code and everything it drew. Killed by PID if it overruns."""
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [*self.program, "--data-dir", str(self.data_dir), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**self.environment(), "COLUMNS": "120"},
            close_fds=True,
        )
        os.close(slave)
        output: list[bytes] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: the terminal's last user is gone
                        chunk = b""
                    if chunk:
                        output.append(chunk)
                        continue
                    break
                if proc.poll() is not None:
                    break
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            os.close(master)
        return code, b"".join(output).decode(errors="replace")

    def status(self) -> dict[str, Any]:
        return dict(self.client(timeout=5).request("GET", "/v1/cluster"))

    def settled_revision(self, quiet_for: float = 1.0, timeout: float = 20.0) -> int:
        """The store's revision once the node's own start-up writes (its lifecycle catalog,
        its services' health) have landed: unchanged for `quiet_for` seconds. For tests
        that assert a request wrote nothing."""
        seen = [self.status()["revision"], time.monotonic()]

        def quiet() -> int | None:
            revision = self.status()["revision"]
            if revision != seen[0]:
                seen[:] = [revision, time.monotonic()]
            return revision if time.monotonic() - seen[1] >= quiet_for else None

        return int(wait_until(quiet, timeout, f"{self.name}'s start-up writes", interval=0.1))

    def kill(self) -> None:
        """kill -9, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, by PID; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def recorded_events(
        self, since: int, table: str | None = None, read_for: float = 2.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """The changes after revision `since` as the store recorded them: (event name,
        change) from `/v1/events` on the node's socket, read for at most `read_for` s."""
        query = f"since={since}" + (f"&table={table}" if table else "")
        received = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.2)
            conn.connect(self.socket_path)
            conn.sendall(f"GET /v1/events?{query} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
            deadline = time.monotonic() + read_for
            while time.monotonic() < deadline:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                received += chunk
        events, name = [], ""
        for line in received.decode(errors="replace").splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: {"):
                events.append((name, json.loads(line[len("data: ") :])))
        return events


class NodeSet:
    """The nodes of one test; `form(n)` makes an n-node cluster with init + token + join."""

    def __init__(self, base: Path, settings: str = "") -> None:
        self.base = base
        self.settings = settings
        self.nodes: list[NodeProcess] = []
        self.admin_token: str | None = None

    def new(self, name: str, start: bool = True) -> NodeProcess:
        node = NodeProcess(self.base, name, self.settings)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def form(self, count: int) -> list[NodeProcess]:
        first = self.new("n1")
        result = first.client().request("POST", "/v1/cluster/init", body={})
        self.admin_token = result["admin_token"]
        for i in range(2, count + 1):
            node = self.new(f"n{i}")
            self.join(node, via=first)
        members = self.nodes[:count]
        for node in members:
            wait_until(
                lambda n=node: len(n.status()["members"]) == count and n.status()["has_quorum"],
                20,
                f"{node.name} to see {count} members",
            )
        return members

    def join(self, node: NodeProcess, via: NodeProcess) -> dict[str, Any]:
        token = via.client().request("POST", "/v1/tokens", body={})["token"]
        return dict(
            node.client(timeout=120).request("POST", "/v1/cluster/join", body={"token": token})
        )

    def leader(self, among: list[NodeProcess] | None = None) -> NodeProcess:
        def find() -> NodeProcess | None:
            for node in among or self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                status = node.status()
                if status.get("role") == "leader" and status.get("has_quorum"):
                    return node
            return None

        return wait_until(find, 20, "a leader with quorum")

    def cleanup(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(AssertionError):
                node.stop(timeout=15)
