"""Durable file writes: fsync of files and of the folders that name them; the data dir's
lock (one process at a time on a node's files).

Used by the Raft journal, the daemon's identity files, the image store and the block
drivers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    """Flush a file or block device another program wrote (qemu-img, for one), and for a
    file the folder that names it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if not path.startswith("/dev/"):
        fsync_dir(os.path.dirname(path) or ".")


def write_file_durably(
    path: str, data: bytes | Sequence[bytes], mode: int = 0o600, *, tmp_suffix: str = "tmp"
) -> None:
    """Write `data` (bytes, or chunks written in turn) to `path` atomically: temp file
    (`path.tmp_suffix`), fsync, rename, fsync of the folder."""
    tmp = f"{path}.{tmp_suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: give back what it took
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def lock_data_dir(data_dir: str) -> int | None:
    """Take the data dir's lock (`symphonyd.lock`, held by the running daemon): its open
    file descriptor, or None when another process holds it. Closing the fd releases it."""
    fd = os.open(os.path.join(data_dir, "symphonyd.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
