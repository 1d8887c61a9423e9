"""The store: tables of records, one global revision, change history and watches.

Every record carries `create_revision` and `mod_revision`. All changes made by one log
entry share one revision. Subscribers are called synchronously, in the thread that
applies the log, with the list of changes of each entry; they must not block (the
daemon's bridge hands them to asyncio). A bounded history of recent changes lets the
events stream resume from a revision.

Threads: the FSM applies under `store.lock`; readers in other threads (the API) take the
same lock around a read that touches more than one record.

Must not: do I/O, read the clock, or import Raft/API code. `apply` stays deterministic.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("symphonyd.state")

Record = dict[str, Any]
Listener = Callable[[list["Change"]], None]

HISTORY_LIMIT = 20_000
# The history is bounded by bytes too: 20,000 changes of 512 KiB values would hold 10 GB.
HISTORY_MAX_BYTES = 64 << 20


def record_bytes(record: Record | None) -> int:
    """About what a record weighs: its key-sized overhead plus its text and byte fields
    (a KV value, a catalog, a step log). Deterministic; used for bounds, not billing."""
    if record is None:
        return 0
    size = 64
    for value in record.values():
        if isinstance(value, (bytes, str)):
            size += len(value)
        elif isinstance(value, (dict, list)):
            size += 64 * len(value)
    return size


@dataclass(frozen=True)
class Change:
    """One record changed by one log entry."""

    revision: int
    table: str
    key: str
    op: str  # "put" or "delete"
    record: Record | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "table": self.table,
            "key": self.key,
            "op": self.op,
            "record": self.record,
        }


@dataclass
class Table:
    """Records of one resource, keyed by id (or key), with an ordered key index."""

    name: str
    records: dict[str, Record] = field(default_factory=dict)
    _keys: list[str] = field(default_factory=list)
    bytes: int = 0  # record_bytes of every record held

    def get(self, key: str) -> Record | None:
        return self.records.get(key)

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> list[Record]:
        return [self.records[k] for k in self._keys]

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        start = bisect.bisect_left(self._keys, prefix)
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            yield key

    def _put(self, key: str, record: Record) -> None:
        old = self.records.get(key)
        if old is None:
            bisect.insort(self._keys, key)
        self.bytes += record_bytes(record) - record_bytes(old) + (0 if old else len(key))
        self.records[key] = record

    def _delete(self, key: str) -> Record | None:
        record = self.records.pop(key, None)
        if record is not None:
            i = bisect.bisect_left(self._keys, key)
            del self._keys[i]
            self.bytes -= record_bytes(record) + len(key)
        return record


class Store:
    """All tables, the global revision, history and subscribers."""

    TABLES = (
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
    )

    def __init__(self) -> None:
        self.revision = 0
        self.tables: dict[str, Table] = {name: Table(name) for name in self.TABLES}
        self.history: deque[Change] = deque()
        self.history_bytes = 0
        self.history_max_bytes = HISTORY_MAX_BYTES
        self._listeners: list[Listener] = []
        self._pending: list[Change] = []
        self._undo: list[tuple[str, str, Record | None]] = []
        # Held by the FSM while it applies an entry and by readers in other threads.
        self.lock = threading.RLock()
        # Derived data kept by table modules (not replicated, not in snapshots): it
        # starts empty on every node at `index_floor`, the revision it covers from.
        self.indexes: dict[str, Any] = {}
        self.index_floor = 0

    # -- reading ----------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        return self.tables[name]

    def get(self, table: str, key: str) -> Record | None:
        return self.tables[table].get(key)

    @property
    def bytes(self) -> int:
        """About what the records of every table weigh (`record_bytes`)."""
        return sum(table.bytes for table in self.tables.values())

    def changes_since(self, revision: int) -> list[Change] | None:
        """Changes after `revision`, or None when that part of the history is gone."""
        if revision >= self.revision:
            return []
        if not self.history or self.history[0].revision > revision + 1:
            return None
        newer: list[Change] = []  # from the newest back: cost follows the changes returned
        for change in reversed(self.history):
            if change.revision <= revision:
                break
            newer.append(change)
        newer.reverse()
        return newer

    # -- writing (only from the FSM) ----------------------------------------------------

    def next_revision(self) -> int:
        """The revision the changes of the entry being applied will carry."""
        return self.revision + 1

    def put(self, table: str, key: str, record: Record) -> Record:
        """Insert or replace a record; fills create_revision/mod_revision."""
        revision = self.next_revision()
        old = self.tables[table].get(key)
        self._undo.append((table, key, old))
        record = dict(record)
        record["create_revision"] = old["create_revision"] if old else revision
        record["mod_revision"] = revision
        self.tables[table]._put(key, record)
        self._pending.append(Change(revision, table, key, "put", record))
        return record

    def delete(self, table: str, key: str) -> Record | None:
        old = self.tables[table]._delete(key)
        if old is not None:
            self._undo.append((table, key, old))
            self._pending.append(Change(self.next_revision(), table, key, "delete", old))
        return old

    def commit(self) -> int:
        """End the current entry: bump the revision if it changed anything, notify."""
        if not self._pending:
            return self.revision
        changes, self._pending = self._pending, []
        self._undo = []
        self.revision = changes[0].revision
        self.history.extend(changes)
        self.history_bytes += sum(record_bytes(c.record) for c in changes)
        # Drop whole revisions, never half of one; the newest entry always stays.
        while len(self.history) > len(changes) and (
            len(self.history) > HISTORY_LIMIT or self.history_bytes > self.history_max_bytes
        ):
            oldest = self.history[0].revision
            while self.history and self.history[0].revision == oldest:
                self.history_bytes -= record_bytes(self.history.popleft().record)
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:  # a broken subscriber must not stop the log
                log.exception("store listener failed")
        return self.revision

    def rollback(self) -> None:
        """Undo the changes of the entry being applied (its apply function failed)."""
        for table, key, old in reversed(self._undo):
            if old is None:
                self.tables[table]._delete(key)
            else:
                self.tables[table]._put(key, old)
        self._undo = []
        self._pending = []

    # -- watches -----------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- snapshots ---------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Plain data of every table (tagged records), for the FSM's snapshot."""
        return {
            "revision": self.revision,
            "records": [
                [name, key, record]
                for name, table in self.tables.items()
                for key, record in table.records.items()
            ],
        }

    def load(self, data: dict[str, Any]) -> None:
        """Replace everything with a dump; subscribers are told of a reset."""
        tables = {name: Table(name) for name in self.TABLES}
        for name, key, record in data["records"]:
            if name not in tables:
                tables[name] = Table(name)
            tables[name]._put(key, record)
        self.tables = tables
        self.revision = int(data["revision"])
        self.indexes = {}
        self.index_floor = self.revision
        self.history.clear()
        self.history_bytes = 0
        self._pending = []
        self._undo = []
        reset = [Change(self.revision, "*", "", "reset", None)]
        for listener in list(self._listeners):
            try:
                listener(reset)
            except Exception:
                log.exception("store listener failed")


def failure(code: str, message: str) -> dict[str, Any]:
    """The result of an entry that was applied but refused (same on every node)."""
    return {"ok": False, "error": {"code": code, "message": message}}
