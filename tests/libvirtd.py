"""A libvirtd of its own for tests and benchmarks on a real hypervisor (qemu under TCG):
started on a socket under a given directory (and virtlogd if none runs), waited for (the
first connection probes qemu's capabilities), and on leaving: the domains named
`symphonyd-*` under that socket destroyed and undefined, libvirtd and virtlogd stopped by
PID, and the iptables rules and chains that appeared while it ran removed.

What this container needs first (ARCHITECTURE.md): `/var/log/libvirt`, and `/dev/kvm`
group `kvm` mode 0660 (else every call takes seconds). Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.nodes import wait_until

__all__ = ["TOOLS", "Libvirtd", "running_libvirtd"]

TOOLS = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")
TABLES = ("filter", "nat", "mangle")
PREFIX = "symphonyd-"


def _rules() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if shutil.which("iptables") is None:
        return found
    for table in TABLES:
        result = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        )
        found[table] = result.stdout.splitlines() if result.returncode == 0 else []
    return found


def _remove_added_rules(before: dict[str, list[str]]) -> None:
    """Undo the iptables rules and chains that appeared while libvirtd ran."""
    for table, rules in _rules().items():
        added = [r for r in rules if r not in before.get(table, [])]
        for rule in added:
            if rule.startswith("-A "):
                subprocess.run(["iptables", "-t", table, "-D", *rule.split()[1:]], check=False)
        for rule in added:
            if rule.startswith("-N "):
                chain = rule.split()[1]
                subprocess.run(["iptables", "-t", table, "-F", chain], check=False)
                subprocess.run(["iptables", "-t", table, "-X", chain], check=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )


class Libvirtd:
    """The running libvirtd: its URI, and a restart (guests keep running across it)."""

    def __init__(self, uri: str, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self.uri = uri
        self._start, self._stop = start, stop

    def restart(self) -> None:
        self._stop()
        self._start()


@contextlib.contextmanager
def running_libvirtd(base: Path) -> Iterator[Libvirtd]:
    """Run libvirtd with its socket under `base`; yields it."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run scripts/bootstrap --test")
    run = base / "libvirtd-run"
    run.mkdir()
    config = base / "libvirtd.conf"
    config.write_text(
        f'unix_sock_dir = "{run}"\nunix_sock_group = "root"\nunix_sock_rw_perms = "0700"\n'
        'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
    )
    os.makedirs("/var/log/libvirt", exist_ok=True)
    if os.path.exists("/dev/kvm"):
        shutil.chown("/dev/kvm", group="kvm")
        os.chmod("/dev/kvm", 0o660)
    before = _rules()
    started: list[subprocess.Popen[bytes]] = []
    log_path = base / "libvirtd.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    uri = f"qemu+unix:///system?socket={run}/libvirt-sock"
    try:
        if not os.path.exists("/run/libvirt/virtlogd-sock"):
            started.append(subprocess.Popen(["virtlogd"], stdout=log, stderr=log))
            wait_until(lambda: os.path.exists("/run/libvirt/virtlogd-sock"), 20, "virtlogd")
        daemons: list[subprocess.Popen[bytes]] = []

        def start() -> None:
            daemon = subprocess.Popen(
                ["libvirtd", "-f", str(config), "-p", str(base / "libvirtd.pid")],
                stdout=log,
                stderr=log,
            )
            daemons.append(daemon)
            started.append(daemon)

            def answers() -> bool:
                if daemon.poll() is not None:
                    text = log_path.read_text(errors="replace")
                    hint = " (another libvirtd runs on this host)" if "pid file" in text else ""
                    raise RuntimeError(f"libvirtd exited{hint}:\n{text[-2000:]}")
                return _virsh(uri, "version").returncode == 0

            wait_until(answers, 120, "libvirtd answering", interval=0.5)

        start()
        yield Libvirtd(uri, start, lambda: _stop(daemons[-1]))
    finally:
        listed = _virsh(uri, "list", "--all", "--name").stdout.split()
        for name in listed:  # only ours, left by a failed test, under our own socket
            if name.startswith(PREFIX):
                _virsh(uri, "destroy", name)
                _virsh(uri, "undefine", name, "--nvram")
        for proc in reversed(started):
            _stop(proc)
        log.close()
        _remove_added_rules(before)
