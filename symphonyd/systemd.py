"""systemd integration without a dependency: `sd_notify` over $NOTIFY_SOCKET.

The daemon says READY=1 once its API serves, STOPPING=1 when it begins to stop, and sends
WATCHDOG=1 at half the interval systemd asked for ($WATCHDOG_USEC), from the event loop:
a loop that hangs stops the pings and systemd restarts the service. Outside systemd
(no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("symphonyd.systemd")


def notify(state: str) -> bool:
    """Send one sd_notify message; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", state, exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings, or None when systemd wants none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog() -> None:
    """Ping systemd's watchdog for as long as the event loop runs."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def start_watchdog() -> asyncio.Task[None] | None:
    if watchdog_interval() is None:
        return None
    return asyncio.create_task(watchdog())


def stop_watchdog(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
