"""The process supervisor and the built-in web lifecycles, with real processes on 127.0.0.1.

States are driven directly (no daemon): a state instance gets a `NodeContext` and its
provides' functions are called as the executor would. Every process is started through a
`Supervisor` that the fixture closes, also on failure; every wait is bounded.
"""

from __future__ import annotations

import ast
import asyncio
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from symphonyd.errors import DriverError, Invalid, Unavailable
from symphonyd.lifecycle import supervisor as supervisor_module
from symphonyd.lifecycle.builtin import web
from symphonyd.lifecycle.builtin.web import Proxy, WebServer, WebSite
from symphonyd.lifecycle.context import NodeContext
from symphonyd.lifecycle.loader import BUILTIN_MODULES, load
from symphonyd.lifecycle.model import Lifecycle, State
from symphonyd.lifecycle.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


# -- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its (non-test) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def live_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def refused(url: str) -> bool:
    try:
        fetch(url)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def state(lifecycle: type[Lifecycle], name: str, context: NodeContext) -> State:
    instance = lifecycle.get_state(name)()
    instance.context = context
    return instance


def call(
    lifecycle: type[Lifecycle], state_name: str, provide: str, context: NodeContext, **args: Any
) -> Any:
    """Run a provide as the executor does, checking what it returns."""
    instance = state(lifecycle, state_name, context)
    item = instance.get_provide(provide)
    result = item.func(instance, **args)
    if provide != "enter":
        return item.check_returns(result)
    return result


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Make supervisors (one per simulated node); all are closed at the end."""
    made: list[Supervisor] = []

    def make(name: str = "run", **options: Any) -> Supervisor:
        supervisor = Supervisor(tmp_path / name, **options)
        made.append(supervisor)
        return supervisor

    try:
        yield make
    finally:
        for supervisor in made:
            supervisor.close()


def node_context(tmp_path: Path, node: str, lifecycle: str, supervisor: Supervisor) -> NodeContext:
    work_dir = tmp_path / node / lifecycle
    work_dir.mkdir(parents=True, exist_ok=True)
    return NodeContext(
        node=node, address="127.0.0.1", work_dir=str(work_dir), supervisor=supervisor
    )


def website(tmp_path: Path, node: str, supervisor: Supervisor, title: str = "Hello") -> str:
    """A WebServer and a WebSite on `node`, up to Active; the site's URL."""
    server = node_context(tmp_path, node, "WebServer", supervisor)
    site = node_context(tmp_path, node, "WebSite", supervisor)
    call(WebServer, "Configured", "enter", server, port=free_port())
    root = call(WebServer, "Configured", "create_document_root", server, path="www/website")
    call(
        WebSite,
        "Templated",
        "enter",
        site,
        path="www/website",
        document_root=root["document_root"],
        title=title,
    )
    call(WebServer, "Active", "enter", server)
    url = call(WebServer, "Active", "start", server)["url"]
    call(WebSite, "Active", "enter", site, url=url)
    return str(call(WebSite, "Active", "start", site)["url"])


# -- the supervisor -------------------------------------------------------------------------


def test_same_argv_keeps_the_process_and_another_replaces_it(
    supervisors: Callable[..., Supervisor],
) -> None:
    supervisor = supervisors()
    pid = supervisor.ensure("sleeper", SLEEPER)
    assert supervisor.ensure("sleeper", list(SLEEPER)) == pid
    assert supervisor.status("sleeper") == {
        "running": True,
        "pid": pid,
        "restarts": 0,
        "last_exit": None,
    }
    other = supervisor.ensure("sleeper", [sys.executable, "-c", "import time; time.sleep(61)"])
    assert other != pid
    assert gone(pid)  # stopped before the new one started
    assert supervisor.status("sleeper")["pid"] == other
    assert supervisor.check() == []  # nothing died: nothing restarted
    log = Path(supervisor.log_path("sleeper"))
    assert log == Path(supervisor.run_dir) / "sleeper.log" and log.exists()


def test_stop_ends_the_whole_process_group(supervisors: Callable[..., Supervisor]) -> None:
    supervisor = supervisors()
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    pid = supervisor.ensure("parent", [sys.executable, "-c", script])
    log = Path(supervisor.log_path("parent"))

    def child_pid() -> int | None:
        for line in log.read_text().splitlines():
            if line.startswith("child "):
                return int(line.split()[1])
        return None

    child = wait_for(child_pid, what="the child's start")
    assert os.getpgid(child) == pid  # the same group, led by the pid we started
    assert sorted(live_members(pid)) == sorted([pid, child])
    supervisor.stop("parent")
    assert gone(pid) and gone(child)  # stop returns once the whole group has ended
    assert live_members(pid) == []
    status = supervisor.status("parent")
    assert status["running"] is False and status["pid"] is None
    assert status["last_exit"] == -signal.SIGTERM
    assert supervisor.check() == []  # a stopped process is not restarted
    supervisor.stop("parent")  # stopping again does nothing
    supervisor.stop("never-started")


def test_stop_kills_what_ignores_sigterm(supervisors: Callable[..., Supervisor]) -> None:
    supervisor = supervisors(stop_timeout=0.5)
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    pid = supervisor.ensure("stubborn", [sys.executable, "-c", script])
    log = Path(supervisor.log_path("stubborn"))
    wait_for(lambda: "ready" in log.read_text(), what="the SIGTERM handler")
    started = time.monotonic()
    supervisor.stop("stubborn")
    assert time.monotonic() - started < 5
    assert gone(pid)
    assert supervisor.status("stubborn")["last_exit"] == -signal.SIGKILL


async def test_watch_restarts_a_killed_process(
    supervisors: Callable[..., Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = supervisors()
    pid = supervisor.ensure("sleeper", SLEEPER)
    watcher = asyncio.create_task(supervisor.watch())
    try:
        with caplog.at_level(logging.WARNING, logger="symphonyd.lifecycle.supervisor"):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while supervisor.status("sleeper")["pid"] in (None, pid):
                assert time.monotonic() < deadline, "not restarted within 10 s"
                await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    status = supervisor.status("sleeper")
    assert status["running"] is True and status["pid"] != pid
    assert status["restarts"] == 1 and status["last_exit"] == -signal.SIGKILL
    assert "killed by SIGKILL" in caplog.text
    assert "--- exited: killed by SIGKILL" in Path(supervisor.log_path("sleeper")).read_text()


def test_restarts_back_off(
    supervisors: Callable[..., Supervisor],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(supervisor_module, "QUICK_RESTARTS", 1)
    monkeypatch.setattr(supervisor_module, "BACKOFF", 1.0)
    supervisor = supervisors()
    argv = [sys.executable, "-c", "import sys, time; time.sleep(0.4); sys.exit(3)"]
    supervisor.ensure("flaky", argv)
    started = time.monotonic()
    restarts: list[float] = []
    deadline = started + 15
    with caplog.at_level(logging.WARNING, logger="symphonyd.lifecycle.supervisor"):
        while len(restarts) < 2:
            assert time.monotonic() < deadline, f"restarted at {restarts} only"
            if supervisor.check():
                restarts.append(time.monotonic())
            time.sleep(0.02)
    assert restarts[0] - started < 1.0  # the first restart is immediate
    assert restarts[1] - restarts[0] >= 1.3  # 0.4 s of life, then 1 s of backoff
    assert "exit code 3" in caplog.text
    assert supervisor.status("flaky")["restarts"] == 2


def test_a_process_that_exits_at_once_raises_with_its_log(
    supervisors: Callable[..., Supervisor],
) -> None:
    supervisor = supervisors()
    argv = [sys.executable, "-c", "import sys; sys.exit('port 1234 already in use')"]
    with pytest.raises(DriverError) as caught:
        supervisor.ensure("broken", argv)
    assert "port 1234 already in use" in caught.value.message
    assert "exit code 1" in caught.value.message
    assert caught.value.details["exit_code"] == 1
    assert supervisor.status("broken") == {
        "running": False,
        "pid": None,
        "restarts": 0,
        "last_exit": 1,
    }
    assert supervisor.check() == []  # a failed start is not retried behind the caller's back
    with pytest.raises(DriverError, match="cannot start"):
        supervisor.ensure("missing", ["/nonexistent/program"])


def test_bad_names_and_argv_are_refused(supervisors: Callable[..., Supervisor]) -> None:
    supervisor = supervisors()
    for name in ["", "Web", "../x", "a/b", "-x", ".x", "a b", "x" * 102, "ü"]:
        with pytest.raises(Invalid):
            supervisor.ensure(name, SLEEPER)
        with pytest.raises(Invalid):
            supervisor.stop(name)
        with pytest.raises(Invalid):
            supervisor.status(name)
    for argv in [[], "sleep 60", ["sleep", 60], ["a\x00b"]]:
        with pytest.raises(Invalid):
            supervisor.ensure("ok", argv)  # type: ignore[arg-type]
    assert os.listdir(supervisor.run_dir) == []


def test_a_process_outlives_the_thread_that_asked_for_it(
    supervisors: Callable[..., Supervisor],
) -> None:
    supervisor = supervisors()
    pids: list[int] = []
    thread = threading.Thread(target=lambda: pids.append(supervisor.ensure("sleeper", SLEEPER)))
    thread.start()
    thread.join(10)
    assert pids
    deadline = time.monotonic() + 0.5  # PDEATHSIG would have fired by now
    while time.monotonic() < deadline:
        assert not gone(pids[0])
        time.sleep(0.05)
    assert supervisor.status("sleeper")["running"] is True


def test_processes_die_with_a_killed_daemon(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import sys, time\n"
        "from symphonyd.lifecycle.supervisor import Supervisor\n"
        f"supervisor = Supervisor({str(tmp_path / 'run')!r})\n"
        f"pid = supervisor.ensure('sleeper', {SLEEPER!r})\n"
        f"open({str(pid_file)!r} + '.tmp', 'w').write(str(pid))\n"
        "import os; os.rename("
        f"{str(pid_file)!r} + '.tmp', {str(pid_file)!r})\n"
        "time.sleep(60)\n"
    )
    daemon = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    sleeper = None
    try:
        wait_for(pid_file.exists, what="the daemon's start")
        sleeper = int(pid_file.read_text())
        assert not gone(sleeper)
        daemon.kill()
        daemon.wait(10)
        wait_for(lambda: gone(sleeper), what="the orphan's end")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        if sleeper is not None and not gone(sleeper):
            os.killpg(sleeper, signal.SIGKILL)  # its own group, started by this test


def test_a_closed_supervisor_stops_everything(supervisors: Callable[..., Supervisor]) -> None:
    supervisor = supervisors()
    pids = [supervisor.ensure(f"p{n}", SLEEPER) for n in range(3)]
    supervisor.close()
    assert all(gone(pid) for pid in pids)
    supervisor.close()
    with pytest.raises(Unavailable, match="closed"):
        supervisor.ensure("p0", SLEEPER)


# -- the web lifecycles ---------------------------------------------------------------------


def test_builtin_catalog_loads_and_is_consistent() -> None:
    loaded = load([], BUILTIN_MODULES)
    assert loaded.broken == {}
    assert loaded.catalog.names() == ["Proxy", "WebServer", "WebSite"]
    loaded.catalog.check()
    assert loaded.catalog.resolve("//WebServer//start").xpath == "WebServer/Active/start"
    assert loaded.catalog.resolve("//WebSite//start").xpath == "WebSite/Active/start"
    for lifecycle in loaded.catalog:
        described = lifecycle.describe()
        assert described["help"]
        for item in described["states"]:
            assert item["help"], f"{lifecycle.name}/{item['name']} has no help"
            for provided in item["provides"]:
                assert provided["help"], f"{lifecycle.name}/{item['name']}/{provided['name']}"


def test_webserver_and_website_serve_the_page(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    supervisor = supervisors()
    server = node_context(tmp_path, "n1", "WebServer", supervisor)
    site = node_context(tmp_path, "n1", "WebSite", supervisor)
    port = free_port()
    call(WebServer, "Configured", "enter", server, port=port)
    assert server.data["port"] == port
    root = call(WebServer, "Configured", "create_document_root", server, path="www/website")
    assert root == {"document_root": str(tmp_path / "n1" / "WebServer" / "www" / "website")}
    assert os.path.isdir(root["document_root"])
    call(
        WebSite,
        "Templated",
        "enter",
        site,
        path="www/website",
        document_root=root["document_root"],
        title="Hello <world>",
    )
    assert sorted(os.listdir(root["document_root"])) == ["index.html"]  # no temporary left
    call(WebServer, "Active", "enter", server)
    url = call(WebServer, "Active", "start", server)["url"]
    assert url == f"http://127.0.0.1:{port}/"
    call(WebSite, "Active", "enter", site, url=url)
    assert call(WebSite, "Active", "start", site) == {"url": url}

    status, body = fetch(url)
    assert status == 200
    assert b"<strong>n1</strong>" in body and b"<title>Hello &lt;world&gt;</title>" in body

    pid = supervisor.status("webserver")["pid"]
    assert call(WebServer, "Active", "start", server) == {"url": url}
    assert supervisor.status("webserver")["pid"] == pid  # start keeps the running server

    state(WebServer, "Active", server).leave()
    assert refused(url)
    assert supervisor.status("webserver")["running"] is False
    state(WebServer, "Active", server).ensure()  # as after a node restart
    assert fetch(url) == (status, body)

    state(WebSite, "Templated", site).leave()
    assert fetch(url)[0] == 200  # a directory listing now: the page is gone
    assert not os.path.exists(os.path.join(root["document_root"], "index.html"))


def test_a_new_document_root_is_served_and_a_default_one_is_made(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    supervisor = supervisors()
    server = node_context(tmp_path, "n1", "WebServer", supervisor)
    port = free_port()
    call(WebServer, "Configured", "enter", server, port=port)
    call(WebServer, "Active", "enter", server)  # no document root created: the default one
    default = tmp_path / "n1" / "WebServer" / "www"
    assert server.data["document_root"] == str(default) and default.is_dir()
    (default / "a.txt").write_text("default root")
    url = f"http://127.0.0.1:{port}/"
    assert fetch(url + "a.txt") == (200, b"default root")

    other = tmp_path / "n1" / "WebServer" / "elsewhere"
    root = call(WebServer, "Configured", "create_document_root", server, path="elsewhere")
    assert root == {"document_root": str(other)}
    (other / "b.txt").write_text("new root")
    state(WebServer, "Active", server).cross(reload=True)  # its flag, as the executor does
    assert fetch(url + "b.txt") == (200, b"new root")
    assert fetch(url + "a.txt")[0] == 404


def test_a_port_in_use_fails_the_start(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    supervisor = supervisors()
    server = node_context(tmp_path, "n1", "WebServer", supervisor)
    with socket.socket() as squatter:  # bound, not listening: no connection can reach it
        squatter.bind(("127.0.0.1", 0))
        call(WebServer, "Configured", "enter", server, port=squatter.getsockname()[1])
        with pytest.raises(DriverError):
            call(WebServer, "Active", "enter", server)
    assert supervisor.status("webserver")["running"] is False


def test_proxy_spreads_requests_over_websites(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    node1, node2, node3 = supervisors("run-n1"), supervisors("run-n2"), supervisors("run-n3")
    url1 = website(tmp_path, "n1", node1, title="One")
    url2 = website(tmp_path, "n2", node2, title="Two")
    proxy = node_context(tmp_path, "n3", "Proxy", node3)
    port = free_port()
    call(
        Proxy,
        "Configured",
        "enter",
        proxy,
        port=port,
        websites=[{"url": url1}, {"url": url2}, {"url": url1}],
    )
    assert proxy.data["backends"] == [url1, url2]
    call(Proxy, "Active", "enter", proxy)
    url = call(Proxy, "Active", "start", proxy)["url"]
    assert url == f"http://127.0.0.1:{port}/"

    seen = []
    for _ in range(4):
        status, body = fetch(url)
        assert status == 200
        seen.append("n1" if b"<strong>n1</strong>" in body else "n2")
    assert seen in (["n1", "n2", "n1", "n2"], ["n2", "n1", "n2", "n1"])

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("HEAD", "/index.html")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        assert int(response.getheader("Content-Length") or 0) > 0
    finally:
        connection.close()
    assert fetch(url + "missing")[0] == 404  # a backend's answer is passed on as it is

    state(WebServer, "Active", node_context(tmp_path, "n1", "WebServer", node1)).leave()
    assert {fetch(url)[1] for _ in range(3)} == {fetch(url2)[1]}  # the dead one is skipped
    state(WebServer, "Active", node_context(tmp_path, "n2", "WebServer", node2)).leave()
    status, body = fetch(url)
    assert (status, body) == (502, b"502 no backend answered\n")

    pid = node3.status("proxy")["pid"]
    call(Proxy, "Configured", "enter", proxy, port=port, websites=[])
    state(Proxy, "Active", proxy).ensure()  # a new configuration: a new proxy process
    assert node3.status("proxy")["pid"] != pid
    assert fetch(url) == (503, b"503 no backends\n")

    state(Proxy, "Active", proxy).leave()
    assert refused(url)


@pytest.mark.parametrize("program", [web.PROXYSERVER, web.STATICSERVER])
def test_server_programs_import_only_the_standard_library(program: str) -> None:
    tree = ast.parse(Path(program).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative import"
            assert node.module is not None
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "__import__"
    assert modules, "found no import at all"
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
