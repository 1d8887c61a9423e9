"""The store (symphonyd/state/store.py) and the KV table's reads (symphonyd/state/kv.py).

Unit tests only: no Raft, no processes. Each test plays the FSM's part by hand: a few
`put`/`delete` calls, then `commit()` to end the "entry".
"""

from __future__ import annotations

import pytest

from symphonyd.state import kv
from symphonyd.state import store as store_module
from symphonyd.state.store import Change, Store, Table


def committed_put(store: Store, table: str, key: str, record: dict) -> int:
    store.put(table, key, record)
    return store.commit()


# -- revisions ------------------------------------------------------------------------------


def test_a_new_store_is_empty_at_revision_zero() -> None:
    store = Store()
    assert store.revision == 0
    assert set(store.tables) == {
        "cluster",
        "nodes",
        "tokens",
        "kv",
        "images",
        "services",
        "volumes",
        "instances",
        "pvs",
        "vgs",
        "lifecycle_catalogs",
        "lifecycles",
        "deployments",
    }
    assert all(len(t) == 0 for t in store.tables.values())


def test_put_fills_create_and_mod_revision() -> None:
    store = Store()
    record = store.put("kv", "a", {"value": b"1"})
    assert record == {"value": b"1", "create_revision": 1, "mod_revision": 1}
    assert store.commit() == 1

    record = store.put("kv", "a", {"value": b"2"})
    assert store.commit() == 2
    assert record["create_revision"] == 1
    assert record["mod_revision"] == 2
    assert store.get("kv", "a") == {"value": b"2", "create_revision": 1, "mod_revision": 2}


def test_put_copies_the_record_it_is_given() -> None:
    store = Store()
    given = {"value": b"1"}
    store.put("kv", "a", given)
    store.commit()
    assert given == {"value": b"1"}  # no revisions written into the caller's dict
    given["value"] = b"changed"
    assert store.get("kv", "a")["value"] == b"1"


def test_all_changes_of_one_entry_share_one_revision() -> None:
    store = Store()
    committed_put(store, "kv", "old", {"value": b"x"})  # revision 1

    store.put("kv", "a", {"value": b"1"})
    store.put("nodes", "n1", {"name": "n1"})
    store.delete("kv", "old")
    store.put("kv", "a", {"value": b"2"})
    assert store.commit() == 2

    assert store.revision == 2
    assert store.get("kv", "a")["mod_revision"] == 2
    assert store.get("kv", "a")["create_revision"] == 2
    assert store.get("nodes", "n1")["mod_revision"] == 2
    assert store.get("kv", "old") is None
    assert [(c.revision, c.table, c.key, c.op) for c in store.changes_since(1)] == [
        (2, "kv", "a", "put"),
        (2, "nodes", "n1", "put"),
        (2, "kv", "old", "delete"),
        (2, "kv", "a", "put"),
    ]


def test_commit_bumps_the_revision_only_when_something_changed() -> None:
    store = Store()
    assert store.commit() == 0
    committed_put(store, "kv", "a", {"value": b"1"})
    assert store.revision == 1

    assert store.commit() == 1  # an entry that changed nothing
    assert store.delete("kv", "missing") is None  # deleting nothing is no change
    assert store.commit() == 1
    assert store.revision == 1

    assert store.delete("kv", "a") == {"value": b"1", "create_revision": 1, "mod_revision": 1}
    assert store.commit() == 2
    assert store.get("kv", "a") is None


def test_next_revision_is_the_one_pending_changes_carry() -> None:
    store = Store()
    committed_put(store, "kv", "a", {})
    assert store.next_revision() == 2
    assert store.put("kv", "b", {})["mod_revision"] == store.next_revision()


# -- history -----------------------------------------------------------------------------


def test_changes_since_returns_the_changes_after_a_revision() -> None:
    store = Store()
    for i in range(1, 4):
        committed_put(store, "kv", f"k{i}", {"value": str(i).encode()})
    assert store.revision == 3

    since_1 = store.changes_since(1)
    assert since_1 is not None
    assert [(c.revision, c.key) for c in since_1] == [(2, "k2"), (3, "k3")]
    assert [(c.revision, c.key) for c in store.changes_since(0)] == [
        (1, "k1"),
        (2, "k2"),
        (3, "k3"),
    ]
    assert since_1[0].record == store.get("kv", "k2")
    assert since_1[0].to_dict() == {
        "revision": 2,
        "table": "kv",
        "key": "k2",
        "op": "put",
        "record": store.get("kv", "k2"),
    }


def test_changes_since_the_current_revision_is_empty() -> None:
    store = Store()
    assert store.changes_since(0) == []
    committed_put(store, "kv", "a", {})
    assert store.changes_since(1) == []
    assert store.changes_since(99) == []  # a client ahead of us waits, it gets nothing


def test_changes_since_is_none_when_that_history_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "HISTORY_LIMIT", 3)
    store = Store()
    for i in range(1, 6):
        committed_put(store, "kv", f"k{i}", {})
    # history holds revisions 3, 4, 5 only
    assert [c.revision for c in store.history] == [3, 4, 5]
    assert store.changes_since(1) is None
    assert store.changes_since(0) is None
    assert [c.revision for c in store.changes_since(2)] == [3, 4, 5]
    assert [c.revision for c in store.changes_since(4)] == [5]


def test_changes_since_never_returns_half_a_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_LIMIT", 4)
    store = Store()
    committed_put(store, "kv", "k1", {})  # revision 1
    for key in ("k2", "k3", "k4"):  # revision 2: three changes of one entry
        store.put("kv", key, {})
    store.commit()
    committed_put(store, "kv", "k5", {})  # revision 3
    committed_put(store, "kv", "k6", {})  # revision 4: pushes out k1 and the k2 change
    # Whole revisions only: revision 2 goes out entirely, never in part.
    assert [c.key for c in store.history] == ["k5", "k6"]

    since_1 = store.changes_since(1)
    # Either the whole of revision 2 (k2, k3, k4) or None ("history gone, resync").
    assert since_1 is None or [c.key for c in since_1 if c.revision == 2] == ["k2", "k3", "k4"]


def test_load_clears_the_history() -> None:
    store = Store()
    committed_put(store, "kv", "a", {})
    committed_put(store, "kv", "b", {})
    copy = Store()
    copy.load(store.dump())
    assert copy.revision == 2
    assert copy.changes_since(2) == []
    assert copy.changes_since(1) is None


# -- subscribers ---------------------------------------------------------------------------


def test_subscribers_get_the_changes_of_each_entry_once_committed() -> None:
    store = Store()
    seen: list[list[Change]] = []
    unsubscribe = store.subscribe(seen.append)

    store.put("kv", "a", {"value": b"1"})
    store.put("kv", "b", {"value": b"2"})
    assert seen == []  # nothing before the commit
    store.commit()
    store.commit()  # nothing changed: no notification
    store.delete("kv", "a")
    store.commit()

    assert [[(c.revision, c.key, c.op) for c in batch] for batch in seen] == [
        [(1, "a", "put"), (1, "b", "put")],
        [(2, "a", "delete")],
    ]
    assert seen[1][0].record == {"value": b"1", "create_revision": 1, "mod_revision": 1}

    unsubscribe()
    unsubscribe()  # twice is harmless
    committed_put(store, "kv", "c", {})
    assert len(seen) == 2


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    store = Store()
    seen: list[int] = []

    def broken(changes: list[Change]) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    store.subscribe(lambda changes: seen.append(changes[0].revision))
    assert committed_put(store, "kv", "a", {}) == 1
    assert committed_put(store, "kv", "b", {}) == 2
    assert seen == [1, 2]


def test_load_tells_subscribers_of_a_reset() -> None:
    source = Store()
    committed_put(source, "kv", "a", {})
    committed_put(source, "kv", "b", {})

    store = Store()
    seen: list[list[Change]] = []
    store.subscribe(seen.append)
    store.load(source.dump())
    assert seen == [[Change(2, "*", "", "reset", None)]]


# -- dump and load ------------------------------------------------------------------------


def test_dump_and_load_round_trip_every_table() -> None:
    store = Store()
    committed_put(store, "cluster", "cluster", {"id": "c1"})
    committed_put(store, "nodes", "n1", {"name": "n1"})
    committed_put(store, "tokens", "t1", {"id": "t1", "kind": "join"})
    committed_put(store, "kv", "b", {"value": b"2"})
    committed_put(store, "kv", "a", {"value": b"1"})
    committed_put(store, "kv", "b", {"value": b"3"})

    copy = Store()
    committed_put(copy, "kv", "stale", {})  # thrown away by load
    copy.load(store.dump())

    assert copy.revision == 6
    for name in Store.TABLES:
        assert copy.table(name).records == store.table(name).records
    assert copy.get("kv", "stale") is None
    assert copy.get("kv", "b") == {"value": b"3", "create_revision": 4, "mod_revision": 6}
    assert list(copy.table("kv").keys_with_prefix("")) == ["a", "b"]  # the index is rebuilt

    committed_put(copy, "kv", "c", {})
    assert copy.get("kv", "c")["mod_revision"] == 7  # revisions continue after a load


# -- the key index ---------------------------------------------------------------------------


def test_keys_with_prefix_are_sorted_and_bounded_by_the_prefix() -> None:
    table = Table("kv")
    for key in ["b/2", "a", "b/10", "b", "b/1", "c/1", "ab", "b0"]:
        table._put(key, {"key": key})
    assert list(table.keys_with_prefix("b/")) == ["b/1", "b/10", "b/2"]
    assert list(table.keys_with_prefix("b")) == ["b", "b/1", "b/10", "b/2", "b0"]
    assert list(table.keys_with_prefix("a")) == ["a", "ab"]
    assert list(table.keys_with_prefix("")) == sorted(table.records)
    assert list(table.keys_with_prefix("zz")) == []
    assert [r["key"] for r in table.values()] == sorted(table.records)

    table._put("b/1", {"key": "b/1", "again": True})  # a replace does not duplicate the key
    table._delete("b/10")
    assert table._delete("missing") is None
    assert list(table.keys_with_prefix("b/")) == ["b/1", "b/2"]
    assert len(table) == 7


# -- kv reads ---------------------------------------------------------------------------


@pytest.fixture
def kv_store() -> Store:
    store = Store()
    keys = ["web/a/1", "web/a/2", "web/b", "web/a.txt", "web//x", "web", "webs/1", "db/x/y"]
    for key in keys:
        kv.put(store, key, key.encode(), 0, None)
        store.commit()
    return store


def test_kv_keys_without_separator_lists_every_key_under_the_prefix(kv_store: Store) -> None:
    assert kv.keys(kv_store, "web/", None) == [
        "web//x",
        "web/a.txt",
        "web/a/1",
        "web/a/2",
        "web/b",
    ]
    assert kv.keys(kv_store, "nothing", None) == []


def test_kv_keys_folds_at_the_first_separator_after_the_prefix(kv_store: Store) -> None:
    assert kv.keys(kv_store, "web/", "/") == ["web//", "web/a.txt", "web/a/", "web/b"]
    assert kv.keys(kv_store, "", "/") == ["db/", "web", "web/", "webs/"]
    assert kv.keys(kv_store, "web/a", "/") == ["web/a.txt", "web/a/"]
    assert kv.keys(kv_store, "web/a/", "/") == ["web/a/1", "web/a/2"]


def test_kv_keys_folds_with_a_longer_separator() -> None:
    store = Store()
    for key in ["x--a--1", "x--a--2", "x--b", "x-c"]:
        kv.put(store, key, b"", 0, None)
    store.commit()
    assert kv.keys(store, "x--", "--") == ["x--a--", "x--b"]
    assert kv.keys(store, "x", "--") == ["x--", "x-c"]


def test_kv_list_prefix_and_index_of(kv_store: Store) -> None:
    assert [r["key"] for r in kv.list_prefix(kv_store, "web/a")] == [
        "web/a.txt",
        "web/a/1",
        "web/a/2",
    ]
    # the index of a read is the highest mod_revision it covers
    assert (
        kv.index_of(kv_store, "web/a", recurse=True)
        == kv.get(kv_store, "web/a.txt")["mod_revision"]
    )
    assert (
        kv.index_of(kv_store, "web/b", recurse=False) == kv.get(kv_store, "web/b")["mod_revision"]
    )
    # nothing there: the store's revision
    assert kv.index_of(kv_store, "missing", recurse=False) == kv_store.revision
    assert kv.index_of(kv_store, "missing/", recurse=True) == kv_store.revision
