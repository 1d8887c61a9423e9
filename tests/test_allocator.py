"""The daemon fixes glibc's mmap threshold (symphonyd/allocator.py) unless the operator's
environment sets it; its status says which threshold is in effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes import NodeSet

PROBE = "from symphonyd import allocator; print(allocator.fix_mmap_threshold())"


def probe(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_the_threshold_is_fixed_unless_the_environment_sets_one() -> None:
    assert probe() == str(128 << 10)  # glibc (Debian): mallopt exists and accepts it
    assert probe(MALLOC_MMAP_THRESHOLD_="65536") == "65536"


@pytest.mark.cluster
def test_a_running_daemon_reports_the_threshold(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path)
    try:
        node = nodes.new("n1")
        assert node.status()["malloc_mmap_threshold"] == 128 << 10
    finally:
        nodes.cleanup()
