"""The files the benchmarks read: dense random data, sparse files with data in pieces, and
a read to put a file in the page cache. Seeded, so every run reads the same bytes."""

from __future__ import annotations

import random
from pathlib import Path

MiB = 1024 * 1024


def make_dense(path: Path, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(rng.randbytes(16 * MiB))


def make_sparse(path: Path, size: int, data: int) -> None:
    """`data` bytes of random data in 16 pieces spread evenly over `size`; the rest holes."""
    rng = random.Random(2)
    pieces = 16
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(pieces):
            f.seek(i * (size // pieces))
            f.write(rng.randbytes(data // pieces))


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass
