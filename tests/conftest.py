"""Shared fixtures: real symphonyd processes (see tests/nodes.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeSet


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
