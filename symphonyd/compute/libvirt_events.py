"""libvirt's events on asyncio: where the `libvirt` compute driver's callbacks run.

`events_on(loop)` makes libvirt's event implementation (libvirtaio) run on `loop`, the
running loop of the driver's `watch()`; `events_loop()` names the loop it runs on now. The
driver registers its lifecycle and close callbacks after it; they then run on that loop's
thread. This module holds the process's one registration, not any connection or callback.

The libvirt facts it relies on:
- One event implementation per process, for good: C `virEventRegisterImpl` ignores a
  second, libvirt-python raises RuntimeError. So the first `events_on()` registers
  libvirtaio's on its loop, and a later loop takes it over only once that loop is closed
  (tests run a loop each, the daemon one); while it is open, another loop is refused.
- libvirt calls the implementation from whichever thread made a libvirt call (the
  driver's calls run in `asyncio.to_thread` workers), and a loop may only be touched from
  its own thread: libvirtaio gets the loop through `_LoopHandle`, which hands each call to
  the loop thread.

libvirt is not imported here until `events_on()` runs, and then through libvirtaio: its
caller has imported libvirt-python first (the driver's `_libvirt()`, which turns a missing
libvirt0 into a DriverError). It must not import the store, Raft or the API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

from symphonyd.errors import DriverError

__all__ = ["events_loop", "events_on"]

_events_lock = threading.Lock()


class _LoopHandle:
    """The event loop as libvirtaio uses it (readers, writers, tasks), safe from any
    thread: each call goes to the loop thread by `call_soon_threadsafe`, in order, and is
    dropped once the loop is closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in ("add_reader", "remove_reader", "add_writer", "remove_writer"):
            raise AttributeError(name)
        method = getattr(self.loop, name)

        def soon(*args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # closed
                self.loop.call_soon_threadsafe(method, *args)

        return soon

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """A future whose cancel() is thread-safe too (libvirtaio cancels its timers)."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # closed
            coro.close()
            return concurrent.futures.Future()


def events_loop() -> asyncio.AbstractEventLoop | None:
    """The loop libvirt's events run on (None: not registered yet)."""
    impl = sys.modules["libvirtaio"].getCurrentImpl() if "libvirtaio" in sys.modules else None
    loop = impl.loop if impl is not None else None
    return cast(asyncio.AbstractEventLoop | None, getattr(loop, "loop", loop))


def events_on(loop: asyncio.AbstractEventLoop) -> None:
    """Make libvirt's events run on `loop` (see the module's docstring)."""
    import libvirtaio

    with _events_lock:
        current = events_loop()
        if current is None:
            try:
                libvirtaio.virEventRegisterAsyncIOImpl(loop=_LoopHandle(loop))
            except RuntimeError as exc:  # another event implementation came first
                raise DriverError(f"cannot run libvirt events on asyncio: {exc}") from exc
        elif current is not loop:
            if not current.is_closed():
                raise DriverError("libvirt events already run on another event loop")
            libvirtaio.getCurrentImpl().loop = _LoopHandle(loop)
