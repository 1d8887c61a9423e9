"""What every service's drivers share (block today, compute next): the answer of a health
check (`Health`), the host-error boundary and the reverter for multi-step work.

* `host_boundary(what)`: a decorator for a driver's public methods. Host errors raised
  inside (`OSError`, `subprocess.CalledProcessError`, `subprocess.TimeoutExpired`) leave
  it as `DriverError` with one line saying what failed and why; errors of the tree pass
  unchanged. So nothing above a driver ever sees a third-party exception.
* `Reverter`: undo steps registered as work goes (`add(undo, *args)` after each step that
  made something); leaving the `with` block by an exception runs them newest first, then
  re-raises the first error (an undo that fails is logged, never hides it); `keep()`
  once all steps are done keeps what was made.

Drivers get plain values and return plain values: this module, like every driver, must
not import the store, Raft or the API.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from symphonyd.errors import DriverError, SymphonyError

__all__ = ["Health", "Reverter", "host_boundary", "host_error"]

log = logging.getLogger("symphonyd.drivers")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Health:
    """A driver's answer when checked: can it work here, and if not, why."""

    ok: bool
    message: str


def host_error(what: str, exc: BaseException) -> DriverError:
    """One line for a host error met while doing `what`."""
    if isinstance(exc, subprocess.CalledProcessError):
        output = exc.stderr or exc.stdout or b""
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        detail = text.strip().splitlines()[-1] if text.strip() else f"exit status {exc.returncode}"
        return DriverError(f"{what} failed: {detail}")
    if isinstance(exc, subprocess.TimeoutExpired):
        return DriverError(f"{what} failed: {exc.cmd!r} took longer than {exc.timeout} s")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return DriverError(f"{what} failed: {exc.strerror or exc}{where}", errno=exc.errno)
    return DriverError(f"{what} failed: {exc}")


def host_boundary(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Convert host errors raised by the decorated method into `DriverError`."""

    def decorate(method: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(method)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(*args, **kwargs)
            except SymphonyError:
                raise
            except (OSError, subprocess.SubprocessError) as exc:
                raise host_error(what, exc) from exc

        return guarded

    return decorate


class Reverter:
    """Undo what a multi-step operation made if a later step fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def add(self, undo: Callable[..., Any], *args: Any) -> None:
        """Register `undo(*args)`, to run if the operation fails from here on."""
        self._undo.append((undo, args))

    def keep(self) -> None:
        """The operation succeeded: keep everything it made."""
        self._undo.clear()

    def revert(self) -> None:
        """Run the undo steps, newest first; a failing one is logged and the rest still run."""
        while self._undo:
            undo, args = self._undo.pop()
            try:
                undo(*args)
            except Exception:
                log.exception("undoing %s%r failed", getattr(undo, "__name__", undo), args)

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.revert()
