"""Copy a file once while computing its SHA-256, keeping it sparse.

Two implementations with the same results: the native module (`native/symcopy.c`, built
by cffi; OpenSSL's SHA-256, reading, hashing and writing overlapped on three threads, the
GIL released) and a pure-Python twin used when the module is missing or when
`SYMPHONYD_NATIVE=0`. `IMPLEMENTATION` says which one is in use.

* `copy_and_hash(src_fd, dst_fd)`: the whole source, hashed; holes in the source and
  all-zero blocks stay holes in the destination; the digest is the SHA-256 of the whole
  logical file (what `sha256sum` prints).
* `sparse_copy(src_fd, dst_fd)`: the same without the hash; its cost grows with the data,
  not the virtual size (for volumes made from already verified images).
* `StreamCopier(dst_fd)`: hashes and writes buffers as they arrive (an HTTP upload).

Errors raise `CopyError` (with the errno: ENOSPC, EIO, ...). These functions never remove
the destination: the caller writes to a temporary name and removes it on failure.
Progress callbacks get the logical bytes done so far, at most every `progress_every`.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symphonyd.errors import DriverError

Progress = Callable[[int], object]  # a true return value stops the copy (ECANCELED)
PROGRESS_EVERY = 8 * 1024 * 1024
BLOCK = 1024 * 1024
GRAIN = 4096
_ZEROS = bytes(BLOCK)


class CopyError(DriverError):
    """A copy failed; `errno` says why (ENOSPC: the disk is full)."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message, errno=errno)
        self.errno = errno


@dataclass(frozen=True)
class CopyResult:
    sha256: str  # hex; "" for sparse_copy
    size: int  # logical size
    data_bytes: int  # bytes written (holes and zero blocks excluded)


# -- the native module ------------------------------------------------------------------

try:
    if os.environ.get("SYMPHONYD_NATIVE", "1") == "0":
        raise ImportError("disabled by SYMPHONYD_NATIVE=0")
    from symphonyd.image._symcopy import ffi as _ffi
    from symphonyd.image._symcopy import lib as _lib

    IMPLEMENTATION = "native"
    NATIVE_ERROR: str | None = None
except ImportError as exc:  # the module was not built, or is disabled
    _ffi = _lib = None
    IMPLEMENTATION = "python"
    NATIVE_ERROR = str(exc)


if _ffi is not None:

    @_ffi.def_extern()
    def sy_progress_callback(ctx: Any, done: int) -> int:
        return 1 if _ffi.from_handle(ctx)(int(done)) else 0


def _native_result(result: Any, hashed: bool) -> CopyResult:
    return CopyResult(
        sha256=bytes(_ffi.buffer(result.sha256, 32)).hex() if hashed else "",
        size=int(result.size),
        data_bytes=int(result.data_bytes),
    )


def _native_error(result: Any) -> CopyError:
    return CopyError(_ffi.string(result.message).decode(errors="replace"), int(result.error))


def _native_copy(
    func: Any, src_fd: int, dst_fd: int, progress: Progress | None, every: int, hashed: bool
) -> CopyResult:
    result = _ffi.new("sy_result *")
    handle = _ffi.new_handle(progress) if progress else _ffi.NULL
    callback = _lib.sy_progress_callback if progress else _ffi.NULL
    if func(src_fd, dst_fd, callback, handle, every, result) != 0:
        raise _native_error(result)
    return _native_result(result, hashed)


# -- the pure-Python twin -------------------------------------------------------------------


def _python_extents(fd: int, size: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) covering [0, size), from SEEK_DATA/SEEK_HOLE."""
    extents: list[tuple[int, int, bool]] = []
    offset = 0
    while offset < size:
        try:
            data = min(os.lseek(fd, offset, os.SEEK_DATA), size)
        except OSError as exc:
            if exc.errno == errno_codes.ENXIO:
                data = size  # only a hole remains
            else:
                extents.append((offset, size - offset, True))  # no SEEK_DATA: all data
                break
        if data > offset:
            extents.append((offset, data - offset, False))
        if data >= size:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        extents.append((data, hole - data, True))
        offset = hole
    return extents


def _read_full(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise CopyError(
                "read: the source shrank while being copied (short read)", errno_codes.EIO
            )
        data += more
    return data


def _write_nonzero(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write the non-zero GRAIN blocks of data; return the bytes written."""
    view = memoryview(data)
    written = 0
    pos = 0
    length = len(view)
    while pos < length:
        if view[pos : pos + GRAIN] == _ZEROS[: min(GRAIN, length - pos)]:
            pos += GRAIN
            continue
        start = pos
        while pos < length and view[pos : pos + GRAIN] != _ZEROS[: min(GRAIN, length - pos)]:
            pos += GRAIN
        end = min(pos, length)
        chunk = view[start:end]
        while chunk:
            n = os.pwrite(fd, chunk, offset + start + (end - start - len(chunk)))
            if n == 0:
                raise CopyError("write: No space left on device", errno_codes.ENOSPC)
            chunk = chunk[n:]
        written += end - start
    return written


def _source_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if not stat.S_ISREG(st.st_mode):
        raise CopyError("the source is not a regular file", errno_codes.EINVAL)
    return st.st_size


def _set_size(fd: int, size: int) -> None:
    """Give a file its logical length (a trailing hole); a device keeps its own size, and
    zeroing what the copy skipped is the caller's job."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        if os.lseek(fd, 0, os.SEEK_END) < size:
            raise CopyError("the destination device is too small", errno_codes.ENOSPC)
        return
    os.ftruncate(fd, size)


def _python_copy(
    src_fd: int, dst_fd: int, progress: Progress | None, every: int, hashed: bool
) -> CopyResult:
    size = _source_size(src_fd)
    digest = hashlib.sha256() if hashed else None
    written = 0
    next_report = every
    for offset, length, is_data in _python_extents(src_fd, size):
        end = offset + length
        while offset < end:
            n = min(BLOCK, end - offset)
            if is_data:
                data = _read_full(src_fd, n, offset)
                if digest:
                    digest.update(data)
                written += _write_nonzero(dst_fd, data, offset)
            elif digest:
                digest.update(_ZEROS[:n])
            offset += n
            if progress and every and offset >= next_report:
                if progress(offset):
                    raise CopyError("copy: cancelled", errno_codes.ECANCELED)
                next_report = offset + every
    _set_size(dst_fd, size)
    if progress:
        progress(size)
    return CopyResult(digest.hexdigest() if digest else "", size, written)


def _guarded(fn: Callable[..., CopyResult], *args: Any) -> CopyResult:
    try:
        return fn(*args)
    except CopyError:
        raise
    except OSError as exc:
        code = exc.errno or errno_codes.EIO
        raise CopyError(f"{exc.strerror or exc}", code) from None


# -- the interface ---------------------------------------------------------------------------


def _use_native(implementation: str | None) -> bool:
    if implementation is None:
        return _lib is not None
    if implementation == "native" and _lib is None:
        raise CopyError(f"the native module is not available: {NATIVE_ERROR}", errno_codes.ENOSYS)
    return implementation == "native"


def copy_and_hash(
    src_fd: int,
    dst_fd: int,
    progress: Progress | None = None,
    progress_every: int = PROGRESS_EVERY,
    implementation: str | None = None,
) -> CopyResult:
    """Copy the whole of src_fd into the empty dst_fd, hashing every logical byte."""
    if _use_native(implementation):
        return _native_copy(_lib.sy_copy_hash, src_fd, dst_fd, progress, progress_every, True)
    return _guarded(_python_copy, src_fd, dst_fd, progress, progress_every, True)


def sparse_copy(
    src_fd: int,
    dst_fd: int,
    progress: Progress | None = None,
    progress_every: int = PROGRESS_EVERY,
    implementation: str | None = None,
) -> CopyResult:
    """Copy only the data of src_fd into the empty dst_fd (no hash)."""
    if _use_native(implementation):
        return _native_copy(_lib.sy_copy_sparse, src_fd, dst_fd, progress, progress_every, False)
    return _guarded(_python_copy, src_fd, dst_fd, progress, progress_every, False)


class StreamCopier:
    """Hash and write buffers as they arrive, in order, into the empty dst_fd."""

    def __init__(self, dst_fd: int, implementation: str | None = None) -> None:
        self._fd = dst_fd
        self._native: Any = None
        self._digest = hashlib.sha256()
        self._offset = 0
        self._written = 0
        if _use_native(implementation):
            self._native = _ffi.gc(_lib.sy_stream_new(dst_fd), _lib.sy_stream_free)
            if self._native == _ffi.NULL:
                raise CopyError("cannot start a stream copy", errno_codes.ENOMEM)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._native is not None:
            if _lib.sy_stream_write(self._native, _ffi.from_buffer(data), len(data)) != 0:
                result = _ffi.new("sy_result *")
                _lib.sy_stream_finish(self._native, result)
                raise _native_error(result)
            return
        try:
            self._digest.update(data)
            self._written += _write_nonzero(self._fd, bytes(data), self._offset)
        except OSError as exc:
            raise CopyError(exc.strerror or str(exc), exc.errno or errno_codes.EIO) from None
        self._offset += len(data)

    def finish(self) -> CopyResult:
        if self._native is not None:
            result = _ffi.new("sy_result *")
            if _lib.sy_stream_finish(self._native, result) != 0:
                raise _native_error(result)
            return _native_result(result, True)
        try:
            _set_size(self._fd, self._offset)
        except OSError as exc:
            raise CopyError(exc.strerror or str(exc), exc.errno or errno_codes.EIO) from None
        return CopyResult(self._digest.hexdigest(), self._offset, self._written)


def describe() -> dict[str, Any]:
    """For status output: which implementation copies images, and why."""
    info: dict[str, Any] = {"implementation": IMPLEMENTATION}
    if _lib is not None:
        info["sha256"] = _ffi.string(_lib.sy_backend()).decode()
    else:
        info["sha256"] = "python hashlib"
        info["reason"] = NATIVE_ERROR
    return info
