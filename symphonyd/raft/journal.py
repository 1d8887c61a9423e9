"""The durable Raft journal: pysyncobj's log, written to an append-only file and fsynced.

pysyncobj's own FileJournal writes through mmap and never syncs, so an acknowledged entry
can vanish with the page cache. This journal keeps pysyncobj's interface (a list of
`(command, idx, term)` plus term, vote and commit index) and adds one promise:

    after `sync()` returns, every entry added before it is on stable storage.

`sync()` is cheap when nothing changed, so the tick loop calls it once per round: all
entries appended in one round of received messages share one `fdatasync` (see
`raft/node.py`, which holds acknowledgements back until the sync is done).

File format (`journal.log`): an 8-byte magic, then records of
`<len:u32><crc32:u32><idx:u64><term:u64><command bytes>`; the crc covers idx, term and the
command. A torn or corrupt tail (a crash mid-write) is cut off when the file is opened:
it was never synced, hence never acknowledged. Term and vote (`journal.state`,
raft/hardstate.py: two slots written in place, so a full disk cannot stop a save) are
synced before pysyncobj sends the vote that depends on them; the commit index beside them
is saved lazily (once a second), but through the same synced write.

A failed `fdatasync` is final (`SyncFailed`). On Linux a writeback error marks the pages
clean: a retried fdatasync succeeds although the data never reached the disk (the
"fsyncgate" of PostgreSQL, 2018), so a journal that retried would acknowledge entries a
power loss then takes away. Instead the journal cuts the file back to what its last good
sync covered (so a restart cannot read the lost entries back from the page cache), and
refuses every add and sync after; raft/node.py stops the node, and the leader sends the
entries again once it has restarted.

This module does no Raft logic and knows nothing of the store.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import zlib
from typing import Any

from pysyncobj.journal import Journal

from symphonyd.durable import fsync_dir
from symphonyd.raft.hardstate import HardState, SyncFailed

__all__ = ["DurableJournal", "SyncFailed"]

log = logging.getLogger("symphonyd.raft.journal")

MAGIC = b"SYJRNL01"
_HEAD = struct.Struct("<IIQQ")
Entry = tuple[bytes, int, int]


def _record(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return _HEAD.pack(len(command), zlib.crc32(body), idx, term) + command


class DurableJournal(Journal):
    """pysyncobj's Journal interface over an fsynced append-only file."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "journal.log")
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self.held_bytes = 0  # the commands held in RAM (what a snapshot lets go)
        self._dirty = False
        self._lock = threading.Lock()
        self.sync_count = 0
        self.synced_entries = 0
        self._unsynced_adds = 0
        self.failed: SyncFailed | None = None
        self._hard_state = HardState(directory)
        self._meta: dict[str, Any] = dict(self._hard_state.state)
        self._meta_saved = dict(self._meta)
        self._fd = self._open_and_recover()
        self._synced_end = self._end  # the file up to here is on stable storage

    # -- opening --------------------------------------------------------------------------

    def _open_and_recover(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        data = b""
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as f:
                data = f.read()
        if not data.startswith(MAGIC):
            if data:
                raise RuntimeError(f"{self.path} is not a symphonyd journal")
            os.write(fd, MAGIC)
            os.fsync(fd)
            fsync_dir(self.directory)
            return fd
        pos = len(MAGIC)
        while pos + _HEAD.size <= len(data):
            length, crc, idx, term = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if end > len(data):
                break
            command = data[pos + _HEAD.size : end]
            if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            self._entries.append((command, idx, term))
            self.held_bytes += len(command)
            self._offsets.append(pos)
            pos = end
        if pos != len(data):
            log.warning(
                "journal %s: cut %d bytes of torn or corrupt tail after entry %s",
                self.path,
                len(data) - pos,
                self._entries[-1][1] if self._entries else None,
            )
            os.ftruncate(fd, pos)
            os.fsync(fd)
        self._end = pos
        return fd

    _end: int = len(MAGIC)

    # -- durability -------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._dirty

    def sync(self) -> None:
        """Put every entry added so far on stable storage (no-op when nothing changed)."""
        if self.failed is not None:
            raise self.failed
        if not self._dirty:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self.failed = SyncFailed(self.path, exc)
            self._cut_unsynced()
            raise self.failed from exc
        self._synced_end = self._end
        self._dirty = False
        self.sync_count += 1
        self.synced_entries += self._unsynced_adds
        self._unsynced_adds = 0

    def _cut_unsynced(self) -> None:
        """After a failed sync: the file back to its last synced length, that cut made
        durable if the disk still can (else a restart reads and cuts a torn tail)."""
        try:
            os.ftruncate(self._fd, self._synced_end)
            os.fdatasync(self._fd)
        except OSError as exc:
            log.error("cannot cut %s back to %d bytes: %s", self.path, self._synced_end, exc)

    # -- pysyncobj's Journal interface ----------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        if self.failed is not None:
            raise self.failed
        command = bytes(command)
        record = _record(command, idx, term)
        written = os.pwrite(self._fd, record, self._end)
        if written != len(record):  # a filesystem that filled up mid-record
            os.ftruncate(self._fd, self._end)  # no half record left behind
            raise OSError(
                errno.ENOSPC,
                f"{os.strerror(errno.ENOSPC)} (wrote {written} of a {len(record)}-byte record)",
                self.path,
            )
        self._offsets.append(self._end)
        self._entries.append((command, idx, term))
        self.held_bytes += len(command)
        self._end += len(record)
        self._dirty = True
        self._unsynced_adds += 1

    def clear(self) -> None:
        self._entries = []
        self._offsets = []
        self.held_bytes = 0
        self._truncate_file(len(MAGIC))

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        end = self._offsets[entryFrom]
        self.held_bytes -= sum(len(e[0]) for e in self._entries[entryFrom:])
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._truncate_file(end)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop entries before `entryTo` (log compaction after a snapshot): rewrite the file."""
        if entryTo <= 0:
            return
        keep = self._entries[entryTo:]
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        offsets = []
        pos = len(MAGIC)
        chunks = [MAGIC]
        for command, idx, term in keep:
            record = _record(command, idx, term)
            offsets.append(pos)
            chunks.append(record)
            pos += len(record)
        try:
            os.write(fd, b"".join(chunks))
            os.fsync(fd)
        finally:
            os.close(fd)
        # The snapshot that makes these entries redundant was just renamed into place:
        # make that rename durable before the entries it replaces disappear.
        fsync_dir(self.directory)
        os.replace(tmp, self.path)
        fsync_dir(self.directory)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._entries = list(keep)
        self.held_bytes = sum(len(e[0]) for e in keep)
        self._offsets = offsets
        self._end = self._synced_end = pos
        self._dirty = False
        self.synced_entries += self._unsynced_adds
        self._unsynced_adds = 0

    def _truncate_file(self, end: int) -> None:
        os.ftruncate(self._fd, end)
        self._end = end
        self._synced_end = min(self._synced_end, end)
        self._dirty = True

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            if self.failed is None:  # else nothing more is written
                try:
                    self.sync()
                    if self._meta != self._meta_saved:
                        self._save_meta()
                except SyncFailed as exc:
                    log.error("closing the journal: %s", exc)
            os.close(self._fd)
            self._hard_state.close()
            self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._meta["commit_index"] = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft: term and vote must be on disk before any message that reflects them is sent.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._save_meta()

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:
        # The commit index is a hint (the leader re-sends it), so it is saved lazily.
        if self._meta != self._meta_saved:
            self._save_meta()

    def _save_meta(self) -> None:
        # Synced, the lazy save of the commit index too: the slot also holds term and vote
        # (a save that was not synced once left them empty after a power loss; found by
        # tests/chaos/test_powerloss.py). At most one sync a second. A failed save is final.
        if self.failed is not None:
            raise self.failed
        try:
            self._hard_state.save(self._meta)
        except SyncFailed as exc:
            self.failed = exc
            raise
        self._meta_saved = dict(self._meta)

    def align_with_snapshot(self, prev: Entry, last: Entry) -> bool:
        """Start the log at a snapshot's last two entries if it holds them.

        pysyncobj compacts the log one tick after it renamed a new snapshot into place; a
        crash in between leaves a snapshot whose first entries are not the log's first,
        and pysyncobj's loader then *clears* the log, dropping entries after the snapshot
        that this node may have acknowledged. Compacting here, before pysyncobj loads,
        closes that window. Returns True if the log was compacted.
        """
        for position, entry in enumerate(self._entries):
            if entry[1] != prev[1]:
                continue
            following = self._entries[position + 1 : position + 2]
            if position == 0 or entry != prev or following != [last]:
                return False
            log.info("journal: compacting to snapshot entry %d left by a crash", prev[1])
            self.deleteEntriesTo(position)
            return True
        return False

    # -- introspection ----------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._end
