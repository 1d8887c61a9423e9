"""Fixtures shared by the chaos suites."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.lossyfs import LossyMount


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[LossyMount]:
    """A lossyfs mount of its own, unmounted (and its process ended) at the end."""
    mount = LossyMount(
        tmp_path / "disk", tmp_path / "mnt", tmp_path / "fs.sock", tmp_path / "fs.log"
    )
    try:
        mount.start()
        yield mount
    finally:
        mount.cleanup()
