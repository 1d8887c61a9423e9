"""Raft snapshots on disk: the file format (checked with a SHA-256) and a writer that
runs on a thread of its own.

pysyncobj with a custom serializer writes the snapshot on its own thread, the Raft thread:
one of a 105 MB store took 0.43 s there (encode 0.2 s, write and fsync the rest, measured
with 91 MiB: 0.21 s and 0.49 s), seconds for a store near its quota, while no heartbeat
leaves and followers start elections. Here the Raft thread only *captures* the state
(`FSM.capture`: references to the records, which are never changed once stored), and
`SnapshotWriter` encodes, checks, writes and fsyncs it on another thread, reporting its
progress through pysyncobj's `serializeChecker`, so pysyncobj compacts the journal only
once the new snapshot is durable.

pysyncobj renames `<snapshot>.tmp` over the snapshot as soon as the serializer returns;
the writer therefore never uses that name (it writes `<snapshot>.next`) and removes a
stale one first, so that rename finds nothing and does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from pysyncobj.config import SERIALIZER_STATE

from symphonyd.durable import write_file_durably
from symphonyd.errors import Invalid

log = logging.getLogger("symphonyd.raft")

LogEntry = tuple[bytes, int, int]  # pysyncobj's (command, index, term)


@dataclasses.dataclass(frozen=True)
class SnapshotFile:
    """A snapshot as stored: the log's last two entries it covers, the Raft members at
    that point, and the FSM's state."""

    last: LogEntry
    prev: LogEntry
    members: list[str]
    state: bytes


class CorruptSnapshot(Invalid):
    """A snapshot file that does not read back as it was written."""


def _snapshot_digest(last: Any, prev: Any, members: Any, state: bytes | Sequence[bytes]) -> str:
    head = msgpack.packb([list(last), list(prev), list(members)], use_bin_type=True)
    digest = hashlib.sha256(bytes(head))
    for chunk in [state] if isinstance(state, bytes | bytearray) else state:
        digest.update(chunk)
    return digest.hexdigest()


def _bin_header(size: int) -> bytes:
    """msgpack's header of a bin object of `size` bytes (msgpack-python has no
    `pack_bin_header`)."""
    if size < 1 << 8:
        return struct.pack(">BB", 0xC4, size)
    if size < 1 << 16:
        return struct.pack(">BH", 0xC5, size)
    return struct.pack(">BI", 0xC6, size)


def write_snapshot_file(
    path: str,
    last: LogEntry,
    prev: LogEntry,
    members: Sequence[str],
    state: bytes | Sequence[bytes],
    *,
    tmp_suffix: str = "tmp",
) -> None:
    """The snapshot as one msgpack map {last, prev, members, state, sha256}; `sha256`
    covers the rest, so a damaged file is refused (a node from before it ignores the key:
    the map is otherwise unchanged). `state` may come in chunks (FSM.encode): they are
    hashed and written one by one, never joined, so a large state is not copied while
    holding the GIL."""
    last_entry = [bytes(last[0]), last[1], last[2]]
    prev_entry = [bytes(prev[0]), prev[1], prev[2]]
    ordered = sorted(members)
    chunks = [state] if isinstance(state, bytes | bytearray) else list(state)
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = [packer.pack_map_header(5)]
    for key, value in (("last", last_entry), ("prev", prev_entry), ("members", ordered)):
        parts += [packer.pack(key), packer.pack(value)]
    parts += [packer.pack("state"), _bin_header(sum(len(c) for c in chunks))]
    parts += chunks
    digest = _snapshot_digest(last_entry, prev_entry, ordered, chunks)
    parts += [packer.pack("sha256"), packer.pack(digest)]
    write_file_durably(path, parts, tmp_suffix=tmp_suffix)


def read_snapshot_file(path: str) -> SnapshotFile:
    """Read and check a snapshot; CorruptSnapshot if it is damaged."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        payload = msgpack.unpackb(data, raw=False)
        last, prev, members, state = (
            payload["last"],
            payload["prev"],
            payload["members"],
            payload["state"],
        )
        digest = payload.get("sha256")  # absent in snapshots of older versions
        if digest is not None and digest != _snapshot_digest(last, prev, members, state):
            raise ValueError("its checksum does not match its content")
        snapshot = SnapshotFile(
            (bytes(last[0]), last[1], last[2]),
            (bytes(prev[0]), prev[1], prev[2]),
            [str(m) for m in members],
            bytes(state),
        )
    except Exception as exc:
        raise CorruptSnapshot(
            f"the Raft snapshot {path} is damaged ({exc}): this node refuses to start from "
            "it rather than serve wrong data. If the other members have a quorum, remove this "
            "node (`symphonyd node remove NAME --force` on one of them) and join it again "
            "with a fresh data dir; if this node holds the last copy, restore its raft "
            "directory from a backup"
        ) from exc
    return snapshot


class SnapshotWriter:
    """Writes one snapshot at a time on a thread of its own; `state()` is pysyncobj's
    `serializeChecker` (SUCCESS or FAILED is reported once, then NOT_SERIALIZING)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._succeeded = False
        self.written = 0  # snapshots written by this writer
        self.last_seconds = 0.0  # how long the last one took, off the Raft thread
        self.capture_seconds = 0.0  # how long its capture took, on the Raft thread

    def start(
        self,
        last: LogEntry,
        prev: LogEntry,
        members: Sequence[str],
        captured: Any,
        encode: Callable[[Any], Sequence[bytes]],
    ) -> None:
        """Begin writing (Raft thread): `encode(captured)` runs on the writer's thread."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.path}.tmp")  # see the module docstring
        self._thread = threading.Thread(
            target=self._write,
            args=(last, prev, list(members), captured, encode),
            name="raft-snapshot",
            daemon=True,
        )
        self._thread.start()

    def _write(
        self,
        last: LogEntry,
        prev: LogEntry,
        members: list[str],
        captured: Any,
        encode: Callable[[Any], Sequence[bytes]],
    ) -> None:
        started = time.perf_counter()
        try:
            write_snapshot_file(self.path, last, prev, members, encode(captured), tmp_suffix="next")
        except Exception:
            log.exception("writing the Raft snapshot %s failed (the journal is kept)", self.path)
            self._succeeded = False
            return
        self._succeeded = True
        self.written += 1
        self.last_seconds = time.perf_counter() - started

    def state(self) -> int:
        thread = self._thread
        if thread is None:
            return int(SERIALIZER_STATE.NOT_SERIALIZING)
        if thread.is_alive():
            return int(SERIALIZER_STATE.SERIALIZING)
        self._thread = None
        return int(SERIALIZER_STATE.SUCCESS if self._succeeded else SERIALIZER_STATE.FAILED)

    def wait(self, timeout: float) -> None:
        """Let a snapshot being written finish (at shutdown); the journal covers it if not."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
