"""The store bounded by bytes (issue 15, item 7): what its records weigh is counted as
they change, the change history and the Raft log held in RAM are trimmed by bytes as
well as by count, and past the `[store] quota` new data is refused while reads, updates
and deletes go on. Before, 1,500 writes of one 512 KiB value took a node to 1.9 GB."""

from __future__ import annotations

from pathlib import Path

import pytest

from symphonyd.config import STORE_DEFAULTS, Settings, validate
from symphonyd.errors import Invalid, QuotaExceeded
from symphonyd.raft.journal import DurableJournal
from symphonyd.state.store import Store, record_bytes
from tests.nodes import NodeSet, wait_until

KiB, MiB = 1 << 10, 1 << 20


def recounted(store: Store) -> int:
    return sum(
        record_bytes(record) + len(key)
        for table in store.tables.values()
        for key, record in table.records.items()
    )


def test_the_store_counts_what_its_records_weigh_through_puts_deletes_and_rollbacks() -> None:
    store = Store()
    store.put("kv", "a", {"key": "a", "value": b"x" * 1000})
    store.put("kv", "b", {"key": "b", "value": b"y" * 10})
    store.commit()
    assert store.bytes == recounted(store) and store.bytes > 1010
    store.put("kv", "a", {"key": "a", "value": b"z"})  # replaced by a smaller one
    store.delete("kv", "b")
    store.rollback()  # the entry failed: nothing changed
    assert store.bytes == recounted(store) and store.table("kv").get("a")["value"] == b"x" * 1000
    store.delete("kv", "a")
    store.commit()
    assert store.bytes == recounted(store)
    store.load(Store().dump() | {"records": [["kv", "c", {"key": "c", "value": b"w" * 50}]]})
    assert store.bytes == recounted(store) > 50


def test_the_history_is_trimmed_by_bytes_but_keeps_the_newest_entry() -> None:
    store = Store()
    store.history_max_bytes = 300 * KiB
    for n in range(20):
        store.put("kv", f"k{n}", {"key": f"k{n}", "value": b"v" * (100 * KiB)})
        store.commit()
    assert store.history_bytes <= 300 * KiB
    assert [c.key for c in store.history] == ["k18", "k19"]  # 2 x 100 KiB plus overhead
    assert store.changes_since(store.revision - 2) is not None
    assert store.changes_since(1) is None  # that part is gone: a client re-reads the state
    store.put("kv", "huge", {"key": "huge", "value": b"h" * (MiB)})
    store.commit()
    assert [c.key for c in store.history] == ["huge"]  # over the bound alone, still kept


def test_the_journal_counts_the_bytes_it_holds(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path))
    for idx in range(1, 11):
        journal.add(b"c" * 1000, idx, 1)
    assert journal.held_bytes == 10_000
    journal.deleteEntriesFrom(8)  # a follower's log cut back by a new leader
    assert journal.held_bytes == 8000
    journal.deleteEntriesTo(5)  # compaction after a snapshot
    assert journal.held_bytes == 3000
    journal.sync()
    journal._destroy()
    assert DurableJournal(str(tmp_path)).held_bytes == 3000  # the same once read back


def test_store_settings_take_sizes_and_refuse_nonsense() -> None:
    settings = Settings(name="n1", store={"quota": "64M"})
    validate(settings)
    assert settings.store == {**STORE_DEFAULTS, "quota": 64 * MiB}
    for bad, message in (
        ({"quota": "lots"}, "[store] quota: invalid size"),
        ({"log_max_bytes": 1000}, "at least 1M"),
        ({"max": "1G"}, "unknown settings: max"),
    ):
        with pytest.raises(Invalid, match=message.replace("[", r"\[").replace("]", r"\]")):
            validate(Settings(name="n1", store=bad))


@pytest.mark.cluster
def test_past_its_quota_the_store_refuses_new_data_and_deletes_make_room(
    tmp_path: Path,
) -> None:
    nodes = NodeSet(tmp_path, settings='[store]\nquota = "4M"\nlog_max_bytes = "2M"\n')
    try:
        (n1,) = nodes.form(1)
        client = n1.client()
        value = b"q" * (512 * KiB)
        written = 0
        with pytest.raises(QuotaExceeded) as refused:
            for written in range(1, 21):  # bounded: 10 MiB at most against a 4 MiB quota
                client.request("PUT", f"/v1/kv/big/{written}", raw=value)
        assert 5 <= written <= 8, written  # about 4 MiB went in first
        assert "the store is full" in str(refused.value) and "[store] quota" in str(refused.value)
        (tmp_path / "value").write_bytes(value)
        reply = n1.cli("kv", "put", "big/more", "--file", str(tmp_path / "value"))
        assert reply.returncode == 1 and "the store is full" in reply.stderr
        assert "Traceback" not in reply.stderr
        # Reads and deletes go on; a delete makes room for the next write.
        assert client.request("GET", "/v1/kv/big/1", query={"raw": "1"}) == value
        assert client.request("DELETE", "/v1/kv/big/1") is True
        assert client.request("DELETE", "/v1/kv/big/2") is True
        assert client.request("PUT", "/v1/kv/big/again", raw=b"small") is True
        # The log held in RAM is bounded by bytes: writes of 512 KiB to one key (the
        # store stays small) force snapshots, so the journal on disk stays small too.
        client.request("DELETE", "/v1/kv/big", query={"recurse": "1"})
        for n in range(24):  # 12 MiB through the log, 6 x log_max_bytes
            client.request("PUT", "/v1/kv/one", raw=bytes([n]) * (512 * KiB))
        journal = n1.data_dir / "raft" / "journal.log"
        wait_until(lambda: journal.stat().st_size < 4 * MiB, 20, "the journal compacted")
        assert (n1.data_dir / "raft" / "snapshot").exists()
        assert "raft log holds" in n1.log() and "compacting" in n1.log()
        n1.stop()  # what it kept reads back
        n1.start()
        wait_until(lambda: n1.status()["has_quorum"], 20, "n1 back")
        read = n1.client().request("GET", "/v1/kv/one", query={"raw": "1", "consistent": "1"})
        assert read == bytes([23]) * (512 * KiB)
    finally:
        nodes.cleanup()
