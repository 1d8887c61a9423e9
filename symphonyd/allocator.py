"""The C allocator's tuning for a long-running daemon: a fixed mmap threshold.

glibc serves allocations of 128 KiB and more with mmap, but raises that threshold each
time such a block is freed (up to 32 MiB), after which big blocks come from the heap and
their memory is rarely given back. Writes of 512 KiB values made the daemon's RSS settle
near 1 GB whatever the Raft log bound (bench/store_bytes.py: 1,500 writes, peak 765 MiB
and 765 MiB after; with a fixed 128 KiB threshold, peak 385 MiB and 228 MiB after). Fixing
the threshold (`mallopt(M_MMAP_THRESHOLD)`) turns the dynamic raise off, so every big
value is mapped and unmapped on its own.

An operator's `MALLOC_MMAP_THRESHOLD_` in the environment wins; on a C library without
`mallopt` (musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 << 10  # glibc's starting value, kept fixed
mmap_threshold: int | None = None  # what `symphonyd run` set (shown in its status)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> int | None:
    """Fix the mmap threshold at `threshold` bytes; the threshold in effect afterwards
    (the environment's, if set), or None if this C library has no `mallopt`."""
    configured = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if configured is not None and configured.isdigit():
        return int(configured)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None
