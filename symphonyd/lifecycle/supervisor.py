"""The processes a node keeps running for its lifecycles, by name (`ProcessSupervisor`).

`ensure(name, argv)` starts `argv` (or keeps it if it already runs with the same argv and
cwd), `stop(name)` ends its whole process group, `watch()` restarts what died (immediately
the first few times, then at most every `BACKOFF` seconds) and `close()` stops everything
when the daemon stops. Each process:

* runs in its own session and process group, and is stopped by signalling that group with
  the pid it was started with, never by name;
* gets `PR_SET_PDEATHSIG(SIGTERM)`, so it dies with the daemon even after a kill -9. The
  kernel sends that signal when the *thread* that forked exits, so every process is forked
  by one long-lived thread owned by the supervisor; `ensure` hands the fork to it from
  whichever thread calls;
* writes its stdout and stderr, appended, to `<run_dir>/<name>.log` (opened by the
  daemon: the process needs no right on the run dir);
* runs as `run_as` (an unprivileged user, with its primary group and no other) when the
  supervisor is given one (`run_as_user`), so a lifecycle's server cannot do what root
  can. The kernel clears PDEATHSIG when a process changes its user; Python calls the
  preexec function after the change, so it holds.

It must not know what the processes are (no lifecycle, no store, no API), never kill a
process it did not start, and never block the asyncio loop: `watch` forks in a worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from symphonyd.errors import DriverError, Invalid, Unavailable

__all__ = ["RunAs", "Supervisor", "run_as_user"]

log = logging.getLogger("symphonyd.lifecycle.supervisor")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,100}$")
EARLY_EXIT = 0.3  # a process dead this soon after its start failed to start
WATCH_INTERVAL = 1.0
QUICK_RESTARTS = 3  # restarts in a row done at once before backing off
BACKOFF = 10.0  # then at most one restart every BACKOFF seconds
STABLE_AFTER = 10.0  # a process that ran this long is counted as having started well
STOP_TIMEOUT = 5.0  # SIGTERM, then SIGKILL after this long
LOG_TAIL = 2000
MAX_LOG = 16 * 1024 * 1024  # a bigger log is moved to <name>.log.1 at the next start
PR_SET_PDEATHSIG = 1


@dataclass
class _Process:
    name: str
    argv: tuple[str, ...]
    cwd: str
    popen: subprocess.Popen[bytes] | None
    wanted: bool = True  # False once stopped: kept only for status()
    restarts: int = 0
    quick_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    exit_seen: bool = False
    last_exit: int | None = None
    restart_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


DEFAULT_USER = "symphonyd-lifecycle"  # what `lifecycle_user = "auto"` runs as, if it exists


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


def run_as_user(setting: str) -> RunAs | None:
    """Who lifecycle processes run as, from the node setting `lifecycle_user`: "auto" is
    DEFAULT_USER where that user exists (else the daemon's own user), "" the daemon's own
    user, anything else a user that must exist. A daemon that is not root cannot switch."""
    if setting == "":
        return None
    name = DEFAULT_USER if setting == "auto" else setting
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if setting == "auto":
            return None
        raise Invalid(
            f"lifecycle_user {name!r} does not exist on this host (create it, e.g. "
            f"`useradd --system --no-create-home --shell /usr/sbin/nologin {name}`, "
            'or set lifecycle_user = "" to run lifecycle processes as the daemon)'
        ) from None
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        if setting == "auto":
            return None
        raise Invalid(f"lifecycle_user {name!r}: only a daemon running as root can switch users")
    run_as = RunAs(name, entry.pw_uid, entry.pw_gid)
    closed = closed_to(run_as, sys.executable)
    if closed is not None:
        raise Invalid(
            f"lifecycle_user {name!r} cannot run this daemon's Python {sys.executable} "
            f"({closed} is closed to it): install symphonyd where other users can run it, "
            'or set lifecycle_user = "" to run lifecycle processes as the daemon'
        )
    return run_as


def closed_to(user: RunAs, path: str) -> str | None:
    """The first directory on the way to `path` (or the file itself) that `user` cannot
    pass (or read and execute), else None, from the mode bits (ACLs are not read)."""

    def allows(st: os.stat_result, bits: int) -> bool:
        if st.st_uid == user.uid:
            return st.st_mode >> 6 & bits == bits
        if st.st_gid == user.gid:  # the only group: the supervisor drops the others
            return st.st_mode >> 3 & bits == bits
        return st.st_mode & bits == bits

    real = os.path.realpath(path)
    parts = real.split(os.sep)[1:]
    for i in range(len(parts)):
        directory = os.sep + os.path.join(*parts[:i]) if i else os.sep
        if not allows(os.stat(directory), 0o1):
            return directory
    return None if allows(os.stat(real), 0o5) else real


def _load_prctl() -> Any:
    """libc's prctl, looked up once in the parent (the child only calls it), or None."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.warning("prctl is not available: processes will outlive a killed daemon")
        return None
    prctl.restype = ctypes.c_int
    return prctl


def _pdeathsig_preexec(prctl: Any) -> Callable[[], None] | None:
    """The child's preexec function: SIGTERM when the forking thread dies."""
    if prctl is None:
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the daemon died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(
            f"bad process name {name!r}: use 1-101 lowercase letters, digits, '.', '_' and "
            "'-', starting with a letter or digit"
        )
    return name


def _check_argv(argv: object) -> tuple[str, ...]:
    if (
        isinstance(argv, str | bytes)
        or not isinstance(argv, Sequence)
        or not argv
        or not all(isinstance(arg, str) and "\x00" not in arg for arg in argv)
    ):
        raise Invalid("argv must be a non-empty list of strings without NUL characters")
    return tuple(argv)


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False if it has no process left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now names someone else's group: ours is gone
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a live process is left in the group. Zombies do not count: an orphan is
    reaped by init, which may take its time (or, in some containers, never does)."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Keeps named processes running; see the module docstring. Thread-safe."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        stop_timeout: float = STOP_TIMEOUT,
        run_as: RunAs | None = None,
    ) -> None:
        self.run_as = run_as
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.stop_timeout = stop_timeout
        self._lock = threading.Lock()  # guards _procs, _name_locks and _closed
        self._name_locks: dict[str, threading.Lock] = {}  # one operation per name at a time
        self._procs: dict[str, _Process] = {}
        self._closed = False
        self._prctl = _load_prctl()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="symphonyd-spawn")

    # -- the ProcessSupervisor protocol --------------------------------------------------

    def ensure(self, name: str, argv: Sequence[str], *, cwd: str | None = None) -> int:
        """Run `argv` as `name` unless it runs with the same argv and cwd already (then
        keep it); a different argv replaces the running process. Returns the pid. Raises
        DriverError, with the end of its log, if the process exits at once."""
        name = _check_name(name)
        args = _check_argv(argv)
        workdir = os.path.abspath(cwd) if cwd is not None else self.run_dir
        with self._name_lock(name):
            with self._lock:
                self._check_open()
                old = self._procs.get(name)
            same = old is not None and old.argv == args and old.cwd == workdir
            if old is not None and same and old.wanted and old.running():
                assert old.pid is not None
                return old.pid
            if old is not None:
                old.wanted = False  # replaced: never restarted by check() again
                if not old.exit_seen:
                    if old.running():
                        log.info("process %s: its command changed, restarting it", name)
                    self._terminate(old)
            proc = _Process(name, args, workdir, None)
            if old is not None and same:
                proc.restarts = old.restarts
            offset = self._start(proc)
            with self._lock:
                self._procs[name] = proc
                closed = self._closed
            if closed:
                self._terminate(proc)
                raise Unavailable("the process supervisor is closed")
            assert proc.popen is not None
            deadline = time.monotonic() + EARLY_EXIT
            while time.monotonic() < deadline:
                code = proc.popen.poll()
                if code is not None:
                    proc.wanted, proc.exit_seen, proc.last_exit = False, True, code
                    _signal_group(proc.popen.pid, signal.SIGKILL)  # anything it left
                    tail = self._log_tail(name, offset)
                    raise DriverError(
                        f"process {name} exited at once ({_describe_exit(code)}): "
                        + (tail or "its log is empty"),
                        name=name,
                        exit_code=code,
                        log=self.log_path(name),
                    )
                time.sleep(0.02)
            return proc.popen.pid

    def stop(self, name: str) -> None:
        """SIGTERM its process group, SIGKILL it after `stop_timeout` s; it is not
        restarted any more. Nothing if it does not run."""
        name = _check_name(name)
        with self._name_lock(name):
            with self._lock:
                proc = self._procs.get(name)
                if proc is None:
                    return
                proc.wanted = False
            self._terminate(proc)

    def status(self, name: str) -> dict[str, Any]:
        """{"running": bool, "pid": int | None, "restarts": int, "last_exit": int | None}."""
        name = _check_name(name)
        with self._lock:
            proc = self._procs.get(name)
        if proc is None:
            return {"running": False, "pid": None, "restarts": 0, "last_exit": None}
        running = proc.wanted and proc.running()
        if proc.popen is not None and proc.popen.returncode is not None:
            last_exit: int | None = proc.popen.returncode
        else:
            last_exit = proc.last_exit
        return {
            "running": running,
            "pid": proc.pid if running else None,
            "restarts": proc.restarts,
            "last_exit": last_exit,
        }

    # -- the daemon's side ----------------------------------------------------------------

    def log_path(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{_check_name(name)}.log")

    async def watch(self) -> None:
        """Every WATCH_INTERVAL s, restart the processes that died (see `check`); returns
        once the supervisor is closed. Cancel it to stop watching."""
        while not self._closed:
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                log.exception("checking the supervised processes failed")
            await asyncio.sleep(WATCH_INTERVAL)

    def check(self) -> list[str]:
        """One round of `watch`: note and log each death, restart what is due. Returns the
        names restarted. A name busy in ensure or stop is left to its caller."""
        restarted = []
        with self._lock:
            if self._closed:
                return []
            procs = [p for p in self._procs.values() if p.wanted]
        for proc in procs:
            lock = self._name_lock(proc.name)
            if not lock.acquire(blocking=False):
                continue
            try:
                if self._closed or not proc.wanted or self._procs.get(proc.name) is not proc:
                    continue
                if proc.running():
                    continue
                if not proc.exit_seen:
                    self._note_exit(proc)
                if time.monotonic() >= proc.restart_at and self._restart(proc):
                    restarted.append(proc.name)
            finally:
                lock.release()
        return restarted

    def close(self) -> None:
        """Stop every process (SIGTERM to all, SIGKILL to what remains after
        `stop_timeout` s) and the forking thread. Later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            names = list(self._procs)
        alive = []
        for name in names:
            # once ensure, stop or a restart of it is over: none starts anything after this
            with self._name_lock(name):
                proc = self._procs[name]
                proc.wanted = False
                if proc.popen is not None and (proc.running() or not proc.exit_seen):
                    _signal_group(proc.popen.pid, signal.SIGTERM)
                    alive.append(proc)
        deadline = time.monotonic() + self.stop_timeout
        for proc in alive:
            self._wait_group(proc, max(0.0, deadline - time.monotonic()))
        for proc in alive:
            assert proc.popen is not None
            if proc.popen.returncode is None or _group_alive(proc.popen.pid):
                log.warning("process %s did not stop on SIGTERM: killing it", proc.name)
                _signal_group(proc.popen.pid, signal.SIGKILL)
                self._wait_group(proc, STOP_TIMEOUT)
            proc.last_exit = proc.popen.returncode
        self._spawner.shutdown(wait=True)

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the process supervisor is closed")

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _start(self, proc: _Process) -> int:
        """Fork `proc` in the spawner thread; returns the log offset where its output
        starts."""
        path = self.log_path(proc.name)
        try:
            if os.path.getsize(path) > MAX_LOG:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            offset = os.fstat(fd).st_size
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"--- {stamp} starting {proc.name}\n".encode())
            try:
                future = self._spawner.submit(self._popen, proc, fd)
            except RuntimeError:  # the spawner was shut down by close()
                raise Unavailable("the process supervisor is closed") from None
            try:
                proc.popen = future.result()
            except OSError as exc:
                raise DriverError(
                    f"cannot start process {proc.name}: {exc.strerror or exc}", name=proc.name
                ) from None
        finally:
            os.close(fd)
        proc.started = time.monotonic()
        proc.exit_seen = False
        log.info("process %s started (pid %d)", proc.name, proc.popen.pid)
        return offset

    def _popen(self, proc: _Process, fd: int) -> subprocess.Popen[bytes]:
        """Runs in the spawner thread only (see PDEATHSIG in the module docstring)."""
        user: dict[str, Any] = {}
        if self.run_as is not None:
            user = {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}
        return subprocess.Popen(
            proc.argv,
            cwd=proc.cwd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec(self._prctl),
            **user,
        )

    def _note_exit(self, proc: _Process) -> None:
        assert proc.popen is not None
        code = proc.popen.returncode if proc.popen.returncode is not None else -1
        proc.exit_seen, proc.last_exit = True, code
        _signal_group(proc.popen.pid, signal.SIGKILL)  # what the leader left behind
        ran = time.monotonic() - proc.started
        proc.quick_failures = 0 if ran >= STABLE_AFTER else proc.quick_failures + 1
        delay = 0.0 if proc.quick_failures <= QUICK_RESTARTS else BACKOFF
        proc.restart_at = time.monotonic() + delay
        when = "now" if delay == 0 else f"in {delay:.0f} s"
        log.warning(
            "process %s (pid %d) died after %.1f s (%s): restarting it %s",
            proc.name,
            proc.popen.pid,
            ran,
            _describe_exit(code),
            when,
        )
        self._append_log(proc.name, f"--- exited: {_describe_exit(code)}\n")

    def _restart(self, proc: _Process) -> bool:
        proc.restarts += 1
        try:
            self._start(proc)
        except (DriverError, Unavailable) as exc:
            proc.quick_failures += 1
            proc.restart_at = time.monotonic() + BACKOFF
            proc.exit_seen = True
            log.error("process %s: restart failed: %s", proc.name, exc.message)
            return False
        return True

    def _terminate(self, proc: _Process) -> None:
        if proc.popen is None:
            return
        pgid = proc.popen.pid
        if _signal_group(pgid, signal.SIGTERM) and not self._wait_group(proc, self.stop_timeout):
            log.warning(
                "process %s (pid %d) did not stop on SIGTERM within %.0f s: killing it",
                proc.name,
                pgid,
                self.stop_timeout,
            )
            _signal_group(pgid, signal.SIGKILL)
            if not self._wait_group(proc, STOP_TIMEOUT):
                log.error("process group %d (%s) survives SIGKILL", pgid, proc.name)
        proc.popen.poll()
        proc.exit_seen, proc.last_exit = True, proc.popen.returncode
        log.info("process %s (pid %d) stopped", proc.name, pgid)

    def _wait_group(self, proc: _Process, timeout: float) -> bool:
        """Wait until the leader is reaped and no process is left in its group."""
        assert proc.popen is not None
        deadline = time.monotonic() + timeout
        while True:
            if proc.popen.poll() is not None and not _group_alive(proc.popen.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _append_log(self, name: str, text: str) -> None:
        try:
            with open(self.log_path(name), "a", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            pass

    def _log_tail(self, name: str, offset: int) -> str:
        try:
            with open(self.log_path(name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(offset, f.tell() - LOG_TAIL))
                data = f.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(line for line in lines if not line.startswith("--- ")).strip()
