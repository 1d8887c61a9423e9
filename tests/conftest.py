"""Shared fixtures: real symphonyd processes (see tests/nodes.py)."""

from __future__ import annotations

from collections.abc import Iterator
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
