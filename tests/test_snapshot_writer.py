"""Snapshots written off the Raft thread (raft/snapshots.py), on a one-node RaftNode in
this process: while one is being encoded the node goes on committing writes; the journal
is compacted only once the snapshot is on disk; a failed snapshot keeps the journal; a
stale `snapshot.tmp` is never renamed over the snapshot; a restart loads what was
written."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from symphonyd.raft.entries import Entry, EntryType
from symphonyd.raft.fsm import FSM, SCHEMA_VERSION, SNAPSHOT_FORMAT, SNAPSHOT_MAGIC
from symphonyd.raft.node import RaftNode
from symphonyd.raft.snapshots import read_snapshot_file, write_snapshot_file
from symphonyd.security import new_secret
from symphonyd.state.store import Store
from tests.nodes import free_port, wait_until

SECRET = new_secret()


def start_node(raft_dir: Path, port: int) -> RaftNode:
    node = RaftNode(
        self_addr=f"127.0.0.1:{port}",
        peers=[],
        raft_dir=str(raft_dir),
        secret=SECRET,
        fsm=FSM(Store()),
    )
    node.start()
    wait_until(lambda: node.status()["role"] == "leader", 10, "the node to lead")
    return node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RaftNode]:
    raft = start_node(tmp_path / "raft", free_port())
    try:
        yield raft
    finally:
        raft.stop()


def put(node: RaftNode, key: str, value: bytes = b"v") -> None:
    done = threading.Event()
    outcome: list[Any] = []

    def callback(result: Any, error: int) -> None:
        outcome.append((result, error))
        done.set()

    body = {"key": key, "value": value, "flags": 0, "cas": None}
    node.submit(Entry(EntryType.KV_PUT, body).encode(), callback)
    assert done.wait(10), f"the write of {key} did not commit within 10 s"
    assert outcome[0][1] == 0 and outcome[0][0]["ok"], outcome


def keys(node: RaftNode) -> set[str]:
    with node.fsm.store.lock:
        return set(node.fsm.store.table("kv").records)


def test_writes_commit_while_a_snapshot_is_encoded_and_the_journal_waits_for_it(
    node: RaftNode, tmp_path: Path
) -> None:
    for i in range(50):
        put(node, f"before/{i}")
    entries = len(node.journal)
    release, encoding = threading.Event(), threading.Event()
    threads: list[str] = []
    encode = node.fsm.encode

    def slow_encode(captured: Any) -> bytes:
        threads.append(threading.current_thread().name)
        encoding.set()
        release.wait(10)
        return encode(captured)

    node.fsm.encode = slow_encode  # type: ignore[method-assign]
    node.forceLogCompaction()
    assert encoding.wait(10), "no snapshot started"
    for i in range(20):  # the Raft thread is free: these commit meanwhile
        put(node, f"during/{i}")
    assert not Path(node.snapshot_path).exists()
    assert len(node.journal) >= entries + 20  # nothing compacted before the file is there
    release.set()
    wait_until(lambda: node.status()["snapshots_written"] == 1, 10, "the snapshot")
    wait_until(lambda: len(node.journal) < 30, 10, "the journal to be compacted")
    assert threads == ["raft-snapshot"]
    snapshot = read_snapshot_file(node.snapshot_path)
    restored = FSM(Store())
    restored.restore(snapshot.state)
    with restored.store.lock:
        in_snapshot = set(restored.store.table("kv").records)
    # what was applied when the snapshot was captured, and nothing later
    assert {f"before/{i}" for i in range(50)} <= in_snapshot
    assert not in_snapshot & {f"during/{i}" for i in range(20)}
    expected = keys(node)
    port = int(node.status()["self"].rsplit(":", 1)[1])
    node.stop()
    again = start_node(Path(node.raft_dir), port)
    try:
        wait_until(lambda: keys(again) == expected, 10, "the restarted node's keys")
    finally:
        again.stop()


def test_a_failed_snapshot_keeps_the_journal_and_the_next_one_succeeds(
    node: RaftNode, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(30):
        put(node, f"k/{i}")
    entries = len(node.journal)
    encode = node.fsm.encode

    def failing(captured: Any) -> bytes:
        raise OSError(28, "No space left on device")

    node.fsm.encode = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="symphonyd.raft"):
        node.forceLogCompaction()
        wait_until(lambda: "writing the Raft snapshot" in caplog.text, 10, "the failure")
    put(node, "after/failure")
    assert len(node.journal) >= entries + 1 and not Path(node.snapshot_path).exists()
    node.fsm.encode = encode  # type: ignore[method-assign]
    node.forceLogCompaction()
    wait_until(lambda: node.status()["snapshots_written"] == 1, 10, "a snapshot")
    wait_until(lambda: len(node.journal) < 10, 10, "the journal to be compacted")


def test_a_stale_tmp_file_is_never_renamed_over_the_snapshot(node: RaftNode) -> None:
    for i in range(10):
        put(node, f"k/{i}")
    stale = Path(f"{node.snapshot_path}.tmp")
    stale.write_bytes(b"left by an older version that crashed mid-write")
    node.forceLogCompaction()
    wait_until(lambda: node.status()["snapshots_written"] == 1, 10, "a snapshot")
    wait_until(lambda: len(node.journal) < 5, 10, "the journal to be compacted")
    assert not stale.exists()
    assert read_snapshot_file(node.snapshot_path).members == [node.status()["self"]]


def test_the_chunked_encoding_is_the_format_snapshots_always_had(tmp_path: Path) -> None:
    store = Store()
    for i in range(1234):  # several batches of FSM.encode
        store.table("kv")._put(f"k/{i}", {"key": f"k/{i}", "value": bytes([i % 256]) * i})
    store.table("nodes")._put("n1", {"name": "n1"})
    store.revision = 4321
    fsm = FSM(store)
    header = {"magic": SNAPSHOT_MAGIC, "format": SNAPSHOT_FORMAT, "schema": SCHEMA_VERSION}
    one_piece = msgpack.packb([header, store.dump()], use_bin_type=True)
    chunks = fsm.encode(fsm.capture())
    assert len(chunks) > 3 and b"".join(chunks) == one_piece
    again = FSM(Store())
    again.restore(fsm.snapshot())
    assert again.store.dump() == store.dump()
    # the file: chunks hashed and written one by one, byte for byte the one-piece file
    last, prev = (b"c", 9, 2), (b"b", 8, 2)
    write_snapshot_file(str(tmp_path / "a"), last, prev, ["m2", "m1"], chunks)
    write_snapshot_file(str(tmp_path / "b"), last, prev, ["m2", "m1"], one_piece)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert read_snapshot_file(str(tmp_path / "a")).state == one_piece
