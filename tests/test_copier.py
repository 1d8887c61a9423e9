"""The native copy-and-checksum module and its pure-Python twin, run against each other and
against hashlib/sha256sum on random dense and sparse files."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symphonyd.image import copier
from symphonyd.image.copier import CopyError, StreamCopier, copy_and_hash, sparse_copy

IMPLEMENTATIONS = ["native", "python"]


@pytest.fixture(autouse=True, scope="module")
def _native_is_built() -> None:
    if copier.IMPLEMENTATION != "native" and not os.environ.get("SYMPHONYD_ALLOW_NO_NATIVE"):
        pytest.fail(f"the native module is not built: {copier.NATIVE_ERROR}")


def make_file(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> bytes:
    """A sparse file of `size` with `pieces` written at their offsets; returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


def run_copy(kind: str, implementation: str, src: Path, dst: Path) -> copier.CopyResult:
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if kind == "stream":
            stream = StreamCopier(dst_fd, implementation=implementation)
            with open(src, "rb") as f:
                while chunk := f.read(random.choice([1, 4095, 65536, 1 << 20])):
                    stream.write(chunk)
            return stream.finish()
        fn = copy_and_hash if kind == "hash" else sparse_copy
        return fn(src_fd, dst_fd, implementation=implementation)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


MiB = 1024 * 1024


@pytest.fixture
def rng() -> Iterator[random.Random]:
    yield random.Random(1234)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["hash", "sparse", "stream"])
@pytest.mark.parametrize(
    "shape",
    [
        "empty",
        "one-byte",
        "odd-dense",
        "sparse-middle",
        "ends-in-hole",
        "zero-blocks",
        "starts-with-hole",
    ],
)
def test_copies_are_identical_and_stay_sparse(
    tmp_path: Path, rng: random.Random, implementation: str, kind: str, shape: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    dense = rng.randbytes(3 * MiB + 12345)
    layouts = {
        "empty": (0, []),
        "one-byte": (1, [(0, b"x")]),
        "odd-dense": (len(dense), [(0, dense)]),
        "sparse-middle": (9 * MiB + 7, [(0, dense[:MiB]), (8 * MiB, dense[: MiB + 7])]),
        "ends-in-hole": (20 * MiB, [(MiB, dense[:777_777])]),
        # explicit zeros inside written data must become holes in the copy
        "zero-blocks": (6 * MiB, [(0, dense[:MiB] + bytes(3 * MiB) + dense[: 2 * MiB])]),
        "starts-with-hole": (5 * MiB + 1, [(4 * MiB, dense[: MiB + 1])]),
    }
    size, pieces = layouts[shape]
    content = make_file(src, size, pieces)
    result = run_copy(kind, implementation, src, dst)
    assert dst.read_bytes() == content
    assert result.size == len(content)
    if kind == "sparse":
        assert result.sha256 == ""
    else:
        assert result.sha256 == hashlib.sha256(content).hexdigest()
    data = len(content) - content.count(0) if shape == "odd-dense" else None
    if shape in ("sparse-middle", "ends-in-hole", "zero-blocks", "starts-with-hole"):
        # holes and zero blocks were not written: the copy holds about the data only
        nonzero_pieces = sum(len(p.rstrip(b"\0")) for _, p in pieces)
        assert result.data_bytes <= nonzero_pieces + 2 * 4096 * len(pieces)
        assert allocated(dst) <= result.data_bytes + 64 * 1024
    if data is not None:
        # dense data is written whole, but for a piece shorter than a grain that is all
        # zeros (a stream chunk's last bytes, 1 in 256 for one random byte): a hole
        assert 0 <= len(content) - result.data_bytes <= 16, (len(content), result.data_bytes)


def test_digest_matches_sha256sum(tmp_path: Path, rng: random.Random) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_file(src, 7 * MiB + 3, [(MiB, rng.randbytes(2 * MiB))])
    result = run_copy("hash", "native", src, dst)
    printed = subprocess.run(
        ["sha256sum", str(src)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert result.sha256 == printed


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(min_value=0, max_value=3 * MiB),
    pieces=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * MiB),
            st.integers(1, 300_000),
            st.sampled_from(["random", "zeros", "ones"]),
        ),
        max_size=5,
    ),
)
def test_random_files_native_and_python_agree(
    tmp_path: Path, size: int, pieces: list[tuple[int, int, str]]
) -> None:
    gen = random.Random(size)
    layout = []
    for offset, length, fill in pieces:
        data = {"random": gen.randbytes(length), "zeros": bytes(length), "ones": b"\1" * length}[
            fill
        ]
        layout.append((offset, data))
    final_size = max([size, *[o + len(d) for o, d in layout]])
    src = tmp_path / "src"
    content = make_file(src, final_size, layout)
    expected = hashlib.sha256(content).hexdigest()
    for implementation in IMPLEMENTATIONS:
        for kind in ("hash", "stream", "sparse"):
            dst = tmp_path / f"dst-{implementation}-{kind}"
            result = run_copy(kind, implementation, src, dst)
            assert dst.read_bytes() == content, (implementation, kind)
            assert result.sha256 == ("" if kind == "sparse" else expected), (implementation, kind)
            assert result.size == final_size


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_progress_is_reported_in_steps(
    tmp_path: Path, rng: random.Random, implementation: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_file(src, 40 * MiB, [(0, rng.randbytes(10 * MiB))])
    seen: list[int] = []
    src_fd, dst_fd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT)
    try:
        copy_and_hash(
            src_fd,
            dst_fd,
            progress=seen.append,
            progress_every=8 * MiB,
            implementation=implementation,
        )
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert seen == sorted(seen) and seen[-1] == 40 * MiB
    assert 4 <= len(seen) <= 6  # every 8 MiB of 40, plus the end
    assert all(b - a >= 8 * MiB for a, b in itertools.pairwise(seen[:-1]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["hash", "sparse", "stream"])
def test_a_full_disk_is_a_clean_error(
    tmp_path: Path, rng: random.Random, implementation: str, kind: str
) -> None:
    src = tmp_path / "src"
    make_file(src, 3 * MiB, [(0, rng.randbytes(3 * MiB))])
    with pytest.raises(CopyError) as caught:
        run_copy(kind, implementation, src, Path("/dev/full"))
    assert caught.value.errno == 28  # ENOSPC
    assert "No space left" in caught.value.message


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_source_that_is_not_a_file_is_refused(tmp_path: Path, implementation: str) -> None:
    dst = tmp_path / "dst"
    with pytest.raises(CopyError, match="not a regular file"):
        run_copy("hash", implementation, tmp_path, dst)


def test_describe_says_which_implementation() -> None:
    info = copier.describe()
    assert info["implementation"] == copier.IMPLEMENTATION
    if copier.IMPLEMENTATION == "native":
        assert "sha256" in info["sha256"]


def test_many_extents_many_times_give_the_same_digest(tmp_path: Path) -> None:
    """The native pipeline hands 8 buffers around three threads; a file of many small
    extents makes the reader lap the hasher, which once raced on a slot's length."""
    rng = random.Random(5)
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        for _ in range(40):
            f.seek(rng.randrange(0, 63 * MiB))
            f.write(rng.randbytes(rng.randrange(1, 300_000)))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    for _ in range(30):
        assert run_copy("hash", "native", src, tmp_path / "dst").sha256 == want
