"""The import layers of ARCHITECTURE.md, enforced by import-linter (contracts in pyproject)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    tool = shutil.which("lint-imports")
    if tool is None:
        pytest.fail("lint-imports (import-linter) is not installed: run scripts/bootstrap --test")
    result = subprocess.run(
        [tool, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")
