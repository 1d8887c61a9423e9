"""What every driver shares: the host-error boundary and the reverter (symphonyd/drivers.py),
and the file driver behind them with real files."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from symphonyd.block.file import FileDriver
from symphonyd.drivers import Reverter, host_boundary
from symphonyd.errors import DriverError, NotFound

VOLUME = "0123456789abcdef0123456789abcdef"


def test_the_reverter_undoes_newest_first_and_keeps_on_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("undo failed")

    with pytest.raises(ValueError, match="step 3"), Reverter() as undo:
        undo.add(done.append, "undo 1")
        undo.add(broken)
        undo.add(done.append, "undo 2")
        raise ValueError("step 3")
    assert done == ["undo 2", "undo 1"]  # newest first; the failing undo did not stop them
    assert "undoing broken() failed" in caplog.text

    done.clear()
    with Reverter() as undo:
        undo.add(done.append, "never")
        undo.keep()
    assert done == []


def test_host_errors_leave_a_driver_as_driver_errors() -> None:
    @host_boundary("open the thing")
    def missing() -> None:
        open("/nonexistent/file")  # noqa: SIM115

    @host_boundary("run the tool")
    def failing_tool() -> None:
        argv = [sys.executable, "-c", "import sys; sys.exit('no space left on the pool')"]
        subprocess.run(argv, check=True, capture_output=True)

    @host_boundary("look it up")
    def ours() -> None:
        raise NotFound("no such volume")

    with pytest.raises(DriverError) as caught:
        missing()
    assert caught.value.message == "open the thing failed: No such file or directory " + (
        "(/nonexistent/file)"
    )
    assert caught.value.details["errno"] == errno.ENOENT
    with pytest.raises(DriverError, match="run the tool failed: no space left on the pool"):
        failing_tool()
    with pytest.raises(NotFound):  # errors of the tree pass unchanged
        ours()


def test_a_failed_create_leaves_nothing_and_says_why(tmp_path: Path) -> None:
    driver = FileDriver(str(tmp_path / "pool"))
    with pytest.raises(DriverError, match="create a volume failed: No such file or directory"):
        driver.create(VOLUME, 1 << 20, image=str(tmp_path / "no-such-image"), image_format="raw")
    assert list((tmp_path / "pool").iterdir()) == []  # the half-made file was removed
    assert driver.create(VOLUME, 1 << 20).size == 1 << 20  # the id is free again
