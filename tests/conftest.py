"""Shared fixtures: real symphonyd processes (see tests/nodes.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """A test not marked `cluster` may not start a symphonyd daemon, so that
    `-m "not cluster"` starts none. Every daemon of the tests starts through NodeProcess:
    `start()` (NodeSet, the `nodeset` fixture, the zipapp's and the upgrade's subclasses) or
    `symphonyd run` in the foreground through `cli()`/`cli_on_terminal()`. For the setup
    (module fixtures included), call and teardown of an unmarked test these refuse to run."""
    if item.get_closest_marker("cluster") is not None:
        return (yield)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        pytest.fail(
            f"{item.nodeid} starts a symphonyd daemon but is not marked `cluster`: add "
            "@pytest.mark.cluster (or pytest.mark.cluster in the module's pytestmark) so that "
            '`-m "not cluster"` starts no daemon',
            pytrace=False,
        )

    def guard(method: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(self: NodeProcess, *args: str, **kwargs: Any) -> Any:
            if args[:1] == ("run",):
                refuse()
            return method(self, *args, **kwargs)

        return guarded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NodeProcess, "start", refuse)
        patch.setattr(NodeProcess, "cli", guard(NodeProcess.cli))
        patch.setattr(NodeProcess, "cli_on_terminal", guard(NodeProcess.cli_on_terminal))
        return (yield)


@pytest.fixture
def nodeset(tmp_path: Path) -> Iterator[NodeSet]:
    nodes = NodeSet(tmp_path)
    try:
        yield nodes
    finally:
        nodes.cleanup()


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Make loop devices on sparse files (root and lvm2 needed; skipped elsewhere, and a
    failure where root lacks lvm2, since CI installs it). Each is detached by its own
    path at the end, also on failure."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and lvm2 need root (CI runs as root)")
    if shutil.which("pvcreate") is None or shutil.which("losetup") is None:
        pytest.fail("lvm2 and losetup are missing: run scripts/bootstrap --test")
    made: list[str] = []

    def make(size: int) -> str:
        backing = tmp_path / f"loop-{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        made.append(device)
        return device

    try:
        yield make
    finally:
        for device in made:
            subprocess.run(["losetup", "--detach", device], capture_output=True)
