"""The README's "Three nodes on one machine" snippet, run literally (its ports, its data
dirs under /tmp) by bash as a user pastes it: the commands wait for the daemons that the
snippet has just started, so `init` and the joins work, and the last `status` shows three
members. The daemons it starts in the background are stopped by their PIDs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

README = Path(__file__).resolve().parent.parent / "README.md"
DATA_DIRS = [Path(f"/tmp/n{i}") for i in (1, 2, 3)]


def snippet(title: str) -> str:
    text = README.read_text()
    section = text[text.index(title) :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block after {title!r}"
    return match.group(1)


PORTS = (15761, 15762, 15763)


def _listeners(ports: tuple[int, ...]) -> list[int]:
    """PIDs listening on `ports` (from `ss`), to stop what a cut-short run left."""
    found = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False)
    pids = set()
    for line in found.stdout.splitlines():
        if any(f":{port} " in line for port in ports):
            pids.update(int(p) for p in re.findall(r"pid=(\d+)", line))
    return sorted(pids)


def _clear() -> None:
    for path in DATA_DIRS:
        if path.exists():
            ours = {"identity.json", "symphonyd.lock"}  # a daemon that never got further
            if not ours & {p.name for p in path.iterdir()} and any(path.iterdir()):
                pytest.fail(f"{path} exists and is not a symphonyd data dir: not touching it")
            shutil.rmtree(path)


def test_the_three_nodes_snippet_works_pasted_as_written(tmp_path: Path) -> None:
    code = snippet("### Three nodes on one machine")
    assert "symphonyd --data-dir /tmp/n1 init" in code
    _clear()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pids: list[int] = []
    try:
        # Files, not pipes: the daemons the snippet leaves running keep its output open.
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            done = subprocess.run(
                ["bash", "-c", f"{code}\necho \"PIDS: $(jobs -p | tr '\\n' ' ')\""],
                env=env,
                stdout=stdout,
                stderr=stderr,
                timeout=180,
                stdin=subprocess.DEVNULL,
            )
        printed, errors = out.read_text(), err.read_text()
        found = re.search(r"PIDS: ([\d ]*)", printed)
        pids = [int(p) for p in found.group(1).split()] if found else []
        assert len(pids) == 3, (printed, errors)
        assert done.returncode == 0, (printed, errors)
        assert "Traceback" not in errors
        members = re.findall(r"^n[123]\s+(leader|follower)", printed, re.M)
        assert len(members) == 3, (printed, errors)
    finally:
        pids = pids or _listeners(PORTS)  # cut short: the daemons holding its ports
        for pid in pids:  # the snippet's own daemons, by PID
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _clear()
