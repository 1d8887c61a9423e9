"""The Raft journal's hard state (term, vote, commit index), saved in place.

Raft's safety needs the term and the vote on stable storage before the vote is sent. The
first design rewrote a small file (`journal.meta`) and renamed it over the old one: each
save needed a free block, so a node whose disk filled could no longer record a new term,
and pysyncobj, which changes its term in memory first, went on at a term it had not saved
(a full-disk leader that was asked to vote stayed leader at the new term in memory).

`journal.state` has two fixed slots of one block each, allocated once: a save writes the
slot after the last one in place (pwrite, then fdatasync), so it never needs a new block.
Each slot is `<magic:8><seq:u64><len:u32><crc32:u32><json>`, the crc over seq and json; on
load the valid slot with the higher seq wins, so a save torn by a crash leaves the other,
older slot. A save that fails raises `SyncFailed`: the node must stop (raft/node.py).

A data dir of an earlier version has `journal.meta` instead: it is read once, written as
the first slot of a new `journal.state` (atomically), then removed.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from typing import Any

from symphonyd.durable import fsync_dir, write_file_durably

log = logging.getLogger("symphonyd.raft.journal")

SLOT = 4096  # one block: a torn write of one slot cannot touch the other
MAGIC = b"SYSTATE1"
_HEAD = struct.Struct("<8sQII")


class SyncFailed(Exception):
    """Writing or syncing the journal failed: what it covered may be lost, and the
    journal takes nothing more (the node must stop; a restart opens what is on disk)."""

    def __init__(self, path: str, cause: OSError, doing: str = "fdatasync") -> None:
        super().__init__(f"{doing} of {path} failed: {cause.strerror or cause}")
        self.cause = cause


def _slot(seq: int, state: dict[str, Any]) -> bytes:
    payload = json.dumps(state, separators=(",", ":")).encode()
    if _HEAD.size + len(payload) > SLOT:
        raise ValueError(f"hard state of {len(payload)} bytes does not fit a slot")
    body = struct.pack("<Q", seq) + payload
    record = _HEAD.pack(MAGIC, seq, len(payload), zlib.crc32(body)) + payload
    return record.ljust(SLOT, b"\0")


def _parse(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    if len(raw) < _HEAD.size:
        return None
    magic, seq, length, crc = _HEAD.unpack_from(raw)
    payload = raw[_HEAD.size : _HEAD.size + length]
    if magic != MAGIC or len(payload) != length:
        return None
    if zlib.crc32(struct.pack("<Q", seq) + payload) != crc:
        return None
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    return (seq, state) if isinstance(state, dict) else None


class HardState:
    """The two-slot file; `state` is what was loaded or last saved."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "journal.state")
        self.legacy_path = os.path.join(directory, "journal.meta")
        if not os.path.exists(self.path):
            self._create(self._load_legacy())
        self._fd = os.open(self.path, os.O_RDWR)
        self.seq, self.state = self._load()

    def _load_legacy(self) -> dict[str, Any]:
        try:
            with open(self.legacy_path, "rb") as f:
                meta = json.loads(f.read())
            return meta if isinstance(meta, dict) else {}
        except FileNotFoundError:
            return {}
        except ValueError:
            log.error("journal meta %s is unreadable; starting from term 0", self.legacy_path)
            return {}

    def _create(self, state: dict[str, Any]) -> None:
        write_file_durably(self.path, bytes(SLOT) + _slot(1, state))  # seq 1: slot 1
        if os.path.exists(self.legacy_path):
            os.unlink(self.legacy_path)
            fsync_dir(os.path.dirname(self.path))

    def _load(self) -> tuple[int, dict[str, Any]]:
        valid = [p for p in (_parse(os.pread(self._fd, SLOT, i * SLOT)) for i in (0, 1)) if p]
        if not valid:
            log.error("journal state %s is unreadable; starting from term 0", self.path)
            return 0, {}
        return max(valid, key=lambda p: p[0])

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` over the older slot and sync it; SyncFailed if that fails."""
        seq = self.seq + 1
        try:
            written = os.pwrite(self._fd, _slot(seq, state), (seq % 2) * SLOT)
            if written != SLOT:
                raise OSError(0, f"wrote {written} of {SLOT} bytes")
            os.fdatasync(self._fd)
        except OSError as exc:
            raise SyncFailed(self.path, exc, doing="saving term and vote") from exc
        self.seq, self.state = seq, dict(state)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
