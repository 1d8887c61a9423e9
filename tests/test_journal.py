"""The durable Raft journal (symphonyd/raft/journal.py): pysyncobj's Journal interface over
an append-only, CRC-checked, fsynced file. Every test closes and reopens the journal, as
a restarted node would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pysyncobj.journal import Journal

from symphonyd.durable import write_file_durably
from symphonyd.raft.hardstate import SLOT
from symphonyd.raft.journal import MAGIC, DurableJournal

Entry = tuple[bytes, int, int]


def entries_of(journal: DurableJournal) -> list[Entry]:
    return [journal[i] for i in range(len(journal))]


def reopen(journal: DurableJournal) -> DurableJournal:
    journal._destroy()
    return DurableJournal(journal.directory)


def filled(directory: Path, count: int, term: int = 1) -> tuple[DurableJournal, list[Entry]]:
    journal = DurableJournal(str(directory))
    wanted = [(f"command {i}".encode() * (i + 1), i + 1, term) for i in range(count)]
    for command, idx, t in wanted:
        journal.add(command, idx, t)
    return journal, wanted


def log_path(directory: Path) -> Path:
    return directory / "journal.log"


# -- basics ------------------------------------------------------------------------------------


def test_is_a_pysyncobj_journal(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path / "raft"))
    assert isinstance(journal, Journal)
    assert len(journal) == 0
    assert journal.getCurrentTerm() == 0
    assert journal.getVotedForNodeId() is None
    assert log_path(tmp_path / "raft").read_bytes() == MAGIC
    journal._destroy()


def test_entries_survive_a_reopen(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 5)
    journal.add(bytearray(b"\x00\xffbinary"), 6, 2)  # pysyncobj may hand in bytearrays
    wanted.append((b"\x00\xffbinary", 6, 2))
    assert entries_of(journal) == wanted
    assert journal[-1] == wanted[-1]
    assert journal[1:3] == wanted[1:3]

    again = reopen(journal)
    assert entries_of(again) == wanted
    assert all(isinstance(e[0], bytes) for e in entries_of(again))
    assert again.size_bytes == os.path.getsize(log_path(tmp_path))
    again._destroy()


def test_term_vote_and_commit_index_survive_a_reopen(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path))
    journal.setCurrentTerm(7, "10.0.0.2:7001")
    journal.setRaftCommitIndex(42)
    # term and vote are durable at once, before any reopen
    peek = DurableJournal(str(tmp_path))
    assert (peek.getCurrentTerm(), peek.getVotedForNodeId()) == (7, "10.0.0.2:7001")
    peek._destroy()

    again = reopen(journal)
    assert again.getCurrentTerm() == 7
    assert again.getVotedForNodeId() == "10.0.0.2:7001"
    assert again.getRaftCommitIndex() == 42

    again.setCurrentTerm(8, None)
    again = reopen(again)
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (8, None)
    again._destroy()


def test_commit_index_is_saved_by_the_one_second_timer(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path))
    assert journal.getRaftCommitIndex() == 1  # pysyncobj's starting value
    journal.setRaftCommitIndex(9)
    journal.onOneSecondTimer()
    # a crash (no _destroy) after the timer keeps it
    crashed = DurableJournal(str(tmp_path))
    assert crashed.getRaftCommitIndex() == 9
    crashed._destroy()
    journal._destroy()


def test_destroy_twice_is_harmless(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 2)
    journal._destroy()
    journal._destroy()
    again = DurableJournal(str(tmp_path))
    assert entries_of(again) == wanted
    again._destroy()


def test_unreadable_state_starts_from_term_zero(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 2)
    journal.setCurrentTerm(3, "a")
    journal._destroy()
    (tmp_path / "journal.state").write_bytes(b"\xff" * 2 * SLOT)
    again = DurableJournal(str(tmp_path))
    assert again.getCurrentTerm() == 0
    assert entries_of(again) == wanted
    again._destroy()


def test_term_and_vote_are_saved_in_place_and_a_torn_slot_keeps_the_other(
    tmp_path: Path,
) -> None:
    """Saves alternate between two slots of a file that never grows (a full disk cannot
    stop them); a slot torn by a crash leaves the previous save."""
    journal, _ = filled(tmp_path, 1)
    state = tmp_path / "journal.state"
    inode = state.stat().st_ino
    for term in range(2, 7):
        journal.setCurrentTerm(term, f"node-{term}")
    journal._destroy()
    assert state.stat().st_size == 2 * SLOT and state.stat().st_ino == inode
    again = DurableJournal(str(tmp_path))
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (6, "node-6")
    again._destroy()
    raw = bytearray(state.read_bytes())
    newest = max((0, 1), key=lambda i: raw[i * SLOT + 8])  # seq's low byte
    raw[newest * SLOT + 30] ^= 0xFF  # the newest save, torn
    state.write_bytes(bytes(raw))
    torn = DurableJournal(str(tmp_path))
    assert (torn.getCurrentTerm(), torn.getVotedForNodeId()) == (5, "node-5")
    torn._destroy()


def test_an_earlier_versions_journal_meta_is_converted(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 2)
    journal._destroy()
    (tmp_path / "journal.state").unlink()
    meta = {"term": 9, "voted_for": "127.0.0.1:7000", "commit_index": 2}
    (tmp_path / "journal.meta").write_text(json.dumps(meta))
    again = DurableJournal(str(tmp_path))
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (9, "127.0.0.1:7000")
    assert again.getRaftCommitIndex() == 2 and entries_of(again) == wanted
    assert not (tmp_path / "journal.meta").exists()
    again._destroy()


# -- deleting entries ----------------------------------------------------------------------


def test_delete_entries_from_then_reopen(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 6)
    journal.sync()
    journal.deleteEntriesFrom(4)
    assert journal.dirty  # the truncation must be synced too
    assert entries_of(journal) == wanted[:4]
    journal.add(b"replacement", 5, 2)  # a new leader's entry at the same index

    again = reopen(journal)
    assert entries_of(again) == [*wanted[:4], (b"replacement", 5, 2)]
    again.deleteEntriesFrom(0)
    again = reopen(again)
    assert entries_of(again) == []
    assert log_path(tmp_path).read_bytes() == MAGIC
    again._destroy()


def test_delete_entries_from_past_the_end_changes_nothing(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 3)
    journal.sync()
    journal.deleteEntriesFrom(3)
    journal.deleteEntriesFrom(10)
    assert not journal.dirty
    assert entries_of(reopen(journal)) == wanted


def test_delete_entries_to_compacts_then_reopen(tmp_path: Path) -> None:
    journal, wanted = filled(tmp_path, 6)
    size_before = os.path.getsize(log_path(tmp_path))
    journal.deleteEntriesTo(4)
    assert entries_of(journal) == wanted[4:]
    assert journal[0][1] == 5  # pysyncobj reads the first index from here
    assert os.path.getsize(log_path(tmp_path)) < size_before
    assert not (tmp_path / "journal.log.compact").exists()

    journal.add(b"after compaction", 7, 1)
    again = reopen(journal)
    assert entries_of(again) == [*wanted[4:], (b"after compaction", 7, 1)]
    assert again.size_bytes == os.path.getsize(log_path(tmp_path))

    # deleting from within the compacted file uses the new offsets
    again.deleteEntriesFrom(1)
    again = reopen(again)
    assert entries_of(again) == [wanted[4]]
    again._destroy()


def test_delete_every_entry_to_the_end(tmp_path: Path) -> None:
    journal, _ = filled(tmp_path, 3)
    journal.deleteEntriesTo(3)
    assert len(journal) == 0
    journal.add(b"x", 4, 1)
    assert entries_of(reopen(journal)) == [(b"x", 4, 1)]


def test_clear_then_reopen(tmp_path: Path) -> None:
    journal, _ = filled(tmp_path, 3)
    journal.clear()
    assert len(journal) == 0
    journal.add(b"fresh", 10, 3)
    assert entries_of(reopen(journal)) == [(b"fresh", 10, 3)]


# -- crashes: torn and corrupt tails ---------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\xff" * 5, b"\x10\x00\x00\x00" + b"\x00" * 20, b"\x05\x00\x00\x00junk" * 10],
    ids=["one-byte", "short-header", "header-no-body", "bad-crc"],
)
def test_garbage_after_the_last_record_is_cut(tmp_path: Path, garbage: bytes) -> None:
    journal, wanted = filled(tmp_path, 3)
    journal._destroy()
    good_size = os.path.getsize(log_path(tmp_path))
    with open(log_path(tmp_path), "ab") as f:
        f.write(garbage)

    again = DurableJournal(str(tmp_path))
    assert entries_of(again) == wanted
    assert os.path.getsize(log_path(tmp_path)) == good_size  # the tail is gone from disk
    again.add(b"next", 4, 1)  # and new records go where it was
    assert entries_of(reopen(again)) == [*wanted, (b"next", 4, 1)]


@pytest.mark.parametrize("cut", [1, 5, 24, 27])
def test_a_record_truncated_mid_write_is_cut(tmp_path: Path, cut: int) -> None:
    journal, wanted = filled(tmp_path, 4)
    last_record_size = 24 + len(wanted[-1][0])
    journal._destroy()
    size = os.path.getsize(log_path(tmp_path))
    os.truncate(log_path(tmp_path), size - last_record_size + cut)

    again = DurableJournal(str(tmp_path))
    assert entries_of(again) == wanted[:3]
    assert os.path.getsize(log_path(tmp_path)) == size - last_record_size
    again.add(b"retry", 4, 2)
    assert entries_of(reopen(again)) == [*wanted[:3], (b"retry", 4, 2)]


@pytest.mark.parametrize(
    "offset_from_record",
    [4, 8, 16, 24, -1],  # crc, idx, term, first command byte, last command byte
    ids=["crc", "idx", "term", "command-start", "command-end"],
)
def test_a_flipped_byte_in_the_last_record_is_caught_by_the_crc(
    tmp_path: Path, offset_from_record: int
) -> None:
    journal, wanted = filled(tmp_path, 4)
    start = journal._offsets[-1]
    journal._destroy()
    data = bytearray(log_path(tmp_path).read_bytes())
    position = start + offset_from_record if offset_from_record >= 0 else len(data) - 1
    data[position] ^= 0x01
    log_path(tmp_path).write_bytes(bytes(data))

    again = DurableJournal(str(tmp_path))
    assert entries_of(again) == wanted[:3]
    again._destroy()


def test_a_flipped_byte_in_a_middle_record_drops_it_and_what_follows(tmp_path: Path) -> None:
    # Records after a corrupt one cannot be trusted to be in order: they are dropped too.
    journal, wanted = filled(tmp_path, 5)
    start = journal._offsets[2]
    journal._destroy()
    data = bytearray(log_path(tmp_path).read_bytes())
    data[start + 30] ^= 0x80
    log_path(tmp_path).write_bytes(bytes(data))
    again = DurableJournal(str(tmp_path))
    assert entries_of(again) == wanted[:2]
    again._destroy()


@pytest.mark.parametrize(
    "content",
    [b"hello, this is not a journal", b"SYJRNL02" + b"\x00" * 30, b"\x00" * 8],
    ids=["text", "other-version", "zeros"],
)
def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path, content: bytes) -> None:
    log_path(tmp_path).write_bytes(content)
    with pytest.raises(RuntimeError, match="not a symphonyd journal"):
        DurableJournal(str(tmp_path))
    assert log_path(tmp_path).read_bytes() == content  # left alone for a human to look at


def test_an_empty_file_becomes_a_journal(tmp_path: Path) -> None:
    log_path(tmp_path).write_bytes(b"")
    journal = DurableJournal(str(tmp_path))
    assert len(journal) == 0
    assert log_path(tmp_path).read_bytes() == MAGIC
    journal.add(b"a", 1, 1)
    assert entries_of(reopen(journal)) == [(b"a", 1, 1)]


# -- sync ------------------------------------------------------------------------------------


def test_sync_clears_dirty_and_counts(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path))
    assert not journal.dirty
    journal.sync()
    assert journal.sync_count == 0  # nothing to sync: no fdatasync

    journal.add(b"a", 1, 1)
    journal.add(b"b", 2, 1)
    assert journal.dirty
    journal.sync()
    assert not journal.dirty
    assert journal.sync_count == 1
    assert journal.synced_entries == 2

    journal.sync()
    assert journal.sync_count == 1

    journal.add(b"c", 3, 1)
    journal.sync()
    assert (journal.sync_count, journal.synced_entries) == (2, 3)

    journal.deleteEntriesFrom(2)
    assert journal.dirty
    journal.sync()
    assert journal.sync_count == 3
    journal._destroy()


def test_write_file_durably_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    write_file_durably(str(target), b"new contents")
    assert target.read_bytes() == b"new contents"
    assert not (tmp_path / "file.tmp").exists()
    assert (target.stat().st_mode & 0o777) == 0o600


def test_align_with_snapshot_compacts_to_the_snapshot_entries(tmp_path: Path) -> None:
    """A crash between a new snapshot and the log compaction: the next start compacts the
    log to the snapshot's entries, keeping everything after them."""
    journal = DurableJournal(str(tmp_path))
    entries = [(f"cmd{i}".encode(), i, 1) for i in range(1, 11)]
    for entry in entries:
        journal.add(*entry)
    journal.sync()
    assert journal.align_with_snapshot(entries[4], entries[5]) is True
    assert [e[1] for e in journal] == [5, 6, 7, 8, 9, 10]
    journal._destroy()
    reopened = DurableJournal(str(tmp_path))
    assert [e[1] for e in reopened] == [5, 6, 7, 8, 9, 10]
    # Already aligned, or entries that differ from the snapshot's: left alone.
    assert reopened.align_with_snapshot(entries[4], entries[5]) is False
    assert reopened.align_with_snapshot((b"other", 7, 1), entries[7]) is False
    assert reopened.align_with_snapshot((b"x", 99, 1), (b"y", 100, 1)) is False
    assert [e[1] for e in reopened] == [5, 6, 7, 8, 9, 10]
    reopened._destroy()
