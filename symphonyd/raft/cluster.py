"""The asyncio face of the Raft node: propose entries, wait for revisions, change members.

pysyncobj runs its own thread. `await cluster.propose(entry)` hands the encoded entry to
that thread and waits on an asyncio future that the entry's callback settles; the result
is the FSM's result on *this* node, so a write is readable here as soon as the call
returns. Store changes cross the same way: `wait_for_revision` wakes when the store
passes a revision (blocking KV reads, the events stream), `wait_for_tables` only when a
change touches one of its tables (agents: a KV write wakes none of them).

Everything a round of applied entries produces (the proposals' outcomes, the tables it
changed) crosses to asyncio in one `call_soon_threadsafe`, after the round; the outcomes
are settled first, so a write's response does not wait behind the watchers it wakes. A
change nobody waits for crosses not at all: the waiters count themselves under the store's
lock, which the FSM holds while it tells of a change (a follower applying KV writes then
never wakes its event loop).

Writes may be proposed on any node: pysyncobj forwards a follower's command to the leader.
A write that cannot reach a leader fails at once with `NoQuorum` instead of hanging.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from pysyncobj import FAIL_REASON

from symphonyd import metrics
from symphonyd.errors import (
    Conflict,
    DiskFull,
    Gone,
    Indeterminate,
    Invalid,
    NoQuorum,
    NotFound,
    QuotaExceeded,
    SymphonyError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from symphonyd.raft.entries import (
    Entry,
    EntryType,
    check_level,
    check_schema,
    required_schema,
    spoken_body_version,
)
from symphonyd.raft.node import RaftNode
from symphonyd.state import nodes
from symphonyd.state.store import Change, Store

log = logging.getLogger("symphonyd.raft.cluster")

# Failures after which the entry was certainly not appended: safe to try again.
_RETRYABLE = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED}
_UNKNOWN_OUTCOME = {FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME}
_FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}

MAX_IN_FLIGHT = 4096
# Entries that bring new data into the store: refused once it is past its quota.
GROWING = frozenset({EntryType.KV_PUT} | {t for t in EntryType if t.name.endswith("_CREATE")})
DEFAULT_QUOTA = 2 << 30
DEFAULT_DISK_RESERVE = 64 << 20
# Cut off this long while a write is in flight: say so, do not hang. `has_quorum` already
# means "heard from a majority within an election timeout" (raft/readindex.py).
QUORUM_GRACE = 0.2
# A filesystem far from its reserve is looked at again only after this long (each look
# is a syscall, on which the event loop gives the GIL away to the Raft thread, once per
# write); one within DISK_SLACK bytes of the reserve, on every write.
DISK_LOOK_EVERY = 1.0
DISK_SLACK = 256 << 20
STALE_STATUS = 0.2  # a Raft status older than this is refreshed (RaftNode: every ~50 ms)
ELECTION_WAIT = 3.0  # raftMaxTimeout is 1.0 s: an election normally ends well within
RESULT_ERRORS: dict[str, type[SymphonyError]] = {
    "conflict": Conflict,
    "not_found": NotFound,
    "invalid": Invalid,
    "unauthorized": Unauthorized,
    "unsupported_entry": Conflict,
}


def raise_for_result(result: dict[str, Any]) -> dict[str, Any]:
    """Turn a refused entry's result into the matching error."""
    if result.get("ok", True):
        return result
    error = result.get("error") or {}
    cls = RESULT_ERRORS.get(error.get("code", ""), Conflict)
    raise cls(error.get("message", "refused"))


class Cluster:
    """A running Raft node seen from asyncio."""

    # The largest entry proposed (a KV value is at most 512 KiB): below raft/node.py's
    # APPEND_BATCH_BYTES, so that pysyncobj never cuts an entry into chunks.
    MAX_ENTRY_BYTES = 4 << 20

    def __init__(self, node: RaftNode, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.store = store
        self.loop = loop
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        # Handed from the Raft thread (under the lock): outcomes of proposals and the
        # tables changed, delivered to asyncio by one call per round (`_hand_off`).
        self._outcomes: list[tuple[asyncio.Future[Any], Any, int]] = []
        self._changed: set[str] = set()
        self._hand_off_due = False
        self._hand_off_lock = threading.Lock()
        # Event loop only: who waits for the next revision, and for a change to a table.
        self._revision_waiters: set[asyncio.Future[None]] = set()
        self._table_waiters: dict[str, set[asyncio.Future[None]]] = {}
        # How many wait, per table and for any revision: changed under `store.lock` only,
        # read by `_on_changes` (under it too).
        self._table_interest: collections.Counter[str] = collections.Counter()
        self._revision_interest = 0
        self._in_flight_futures: set[asyncio.Future[Any]] = set()
        self._quorum_watch: asyncio.Task[None] | None = None
        self._unsubscribe = store.subscribe(self._on_changes)
        node.applied_listeners.append(self._hand_off)
        self.quota_bytes = DEFAULT_QUOTA  # [store] quota: new data refused past it
        self.disk_reserve = DEFAULT_DISK_RESERVE  # [store] disk_reserve: free space kept
        self._disk_room = 0  # bytes above the reserve at the last look, less what came since
        self._disk_looked = -DISK_LOOK_EVERY

    # -- writes ---------------------------------------------------------------------------

    async def propose(
        self, entry: Entry, timeout: float = 10.0, *, idempotent: bool = False
    ) -> dict[str, Any]:
        """Commit an entry and return the FSM's result on this node.

        An entry whose outcome is unknown (the leader changed while it was in flight) is
        proposed again only if `idempotent`: applying it twice must do no harm."""
        deadline = time.monotonic() + timeout
        self.require_schema(entry.type)
        data = entry.encode()
        if len(data) > self.MAX_ENTRY_BYTES:
            raise TooLarge(
                f"the change is {len(data)} bytes encoded, over the "
                f"{self.MAX_ENTRY_BYTES >> 20} MiB a log entry may hold"
            )
        self._check_quota(entry.type, len(data))
        self._check_disk(entry.type, len(data))
        async with self._in_flight:
            while True:
                if not self.has_leader():
                    await self._await_election(deadline)
                future: asyncio.Future[tuple[Any, int]] = self.loop.create_future()
                self._in_flight_futures.add(future)
                self._ensure_quorum_watch()
                started = time.perf_counter()
                # Submitted last: it wakes the Raft thread, which then finds the GIL free.
                self.node.submit(data, functools.partial(self._outcome, future))
                try:
                    result, error = await self._within(future, deadline - time.monotonic())
                except TimeoutError:
                    raise Indeterminate(
                        f"the write was not confirmed within {timeout:g}s; it may still be "
                        "applied (check before retrying)"
                    ) from None
                finally:
                    self._in_flight_futures.discard(future)
                if error == FAIL_REASON.SUCCESS:
                    metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
                    return dict(result) if isinstance(result, dict) else {"ok": True}
                retry = error in _RETRYABLE or (idempotent and error in _UNKNOWN_OUTCOME)
                if retry and time.monotonic() < deadline - 0.05:
                    await asyncio.sleep(0.05)
                    continue
                if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER):
                    raise NoQuorum(self.no_quorum_message())
                if error == FAIL_REASON.QUEUE_FULL:
                    raise Unavailable("too many writes in flight; retry later")
                raise Indeterminate(
                    f"the write's outcome is unknown ({_FAIL_NAMES.get(error, error)}): "
                    "the leader changed while it was in flight; it may still be applied "
                    "(check before retrying)"
                )

    def _check_quota(self, entry_type: int, size: int) -> None:
        """Refuse new data (a KV write, a new record) that would take the store past its
        quota, as etcd's space quota does; updates, deletes and reads still work, so an
        operator can make room. Checked on the node that takes the request, against its
        copy of the store: a burst may pass it by a few entries, never by much."""
        if entry_type not in GROWING:
            return
        held = self.store.bytes
        if held + size > self.quota_bytes:
            raise QuotaExceeded(
                f"the store is full: it holds {held >> 20} MiB of its "
                f"{self.quota_bytes >> 20} MiB quota; delete keys or records to make room, "
                "or raise [store] quota on every node"
            )

    def _check_disk(self, entry_type: int, size: int) -> None:
        """Refuse new data (a KV put, a new record) while the data dir's filesystem has
        less than `disk_reserve` (at most a tenth of the filesystem) free on this node, so
        a disk that fills up gives a clear error rather than a journal that cannot be
        written. Updates and deletes pass: they are small, they are how room is made, and
        the node's own status updates (an import that failed for want of space) must
        still be recorded."""
        if entry_type not in GROWING:
            return
        now = time.monotonic()
        self._disk_room -= size
        if self._disk_room > DISK_SLACK and now - self._disk_looked < DISK_LOOK_EVERY:
            return
        try:
            fs = os.statvfs(self.node.raft_dir)
        except OSError:
            return
        free = fs.f_bavail * fs.f_frsize
        reserve = min(self.disk_reserve, fs.f_blocks * fs.f_frsize // 10)  # small disks too
        self._disk_room, self._disk_looked = free - reserve - size, now
        if free >= reserve + size:
            return
        raise DiskFull(
            f"the data dir's filesystem is nearly full: {free >> 20} MiB free at "
            f"{self.node.raft_dir}, under the {reserve >> 20} MiB kept free "
            "([store] disk_reserve, at most a tenth of the filesystem): new data is refused "
            "until space is freed there; deletes and updates still work"
        )

    def require_schema(self, entry_type: int) -> None:
        """Refuse, before anything is written, what some member could not apply."""
        if required_schema(entry_type) > 1:
            check_schema(entry_type, self._member_schemas())

    def require_schema_level(self, needed: int, what: str) -> None:
        """Refuse `what` (e.g. a cluster setting) unless every member speaks `needed`."""
        if needed > 1:
            check_level(what, needed, self._member_schemas())

    def spoken_body_version(self, entry_type: int) -> int:
        """The newest body version of `entry_type` every member can apply."""
        return spoken_body_version(entry_type, self._member_schemas())

    def _member_schemas(self) -> dict[str, int]:
        with self.store.lock:
            return {n["name"]: int(n.get("schema", 1)) for n in nodes.all_nodes(self.store)}

    def _ensure_quorum_watch(self) -> None:
        if self._quorum_watch is None or self._quorum_watch.done():
            self._quorum_watch = self.loop.create_task(self._watch_quorum())

    async def _watch_quorum(self) -> None:
        """While writes are in flight: if this node is cut off from the majority for
        QUORUM_GRACE seconds, fail them with NoQuorum instead of letting them hang (one
        watcher for all writes; no timer per write)."""
        cut_off_since: float | None = None
        while self._in_flight_futures:
            await asyncio.sleep(0.1)
            if self.node.status().get("has_quorum"):
                cut_off_since = None
                continue
            now = time.monotonic()
            if cut_off_since is None:
                cut_off_since = now
            elif now - cut_off_since >= QUORUM_GRACE:
                message = (
                    self.no_quorum_message()
                    + "; the write was sent: it applies if quorum returns (check before "
                    "retrying)"
                )
                for future in list(self._in_flight_futures):
                    if not future.done():
                        future.set_exception(Indeterminate(message))

    async def _await_election(self, deadline: float) -> None:
        """No leader known. Cut off from the majority: fail (once a fresh status says so:
        the Raft thread refreshes it every ~50 ms, and a node that has just joined can
        apply the entries it was sent before its status shows the connection they came
        by). Connected to it (an election is running, e.g. just after a restart): wait
        for its outcome, briefly."""
        until = min(deadline, time.monotonic() + ELECTION_WAIT)
        cut_off_since: float | None = None
        while not self.has_leader():
            now = time.monotonic()
            if self.node.status().get("has_quorum"):
                cut_off_since = None
            elif cut_off_since is None:
                cut_off_since = now
            if now >= until or (cut_off_since is not None and now - cut_off_since >= STALE_STATUS):
                raise NoQuorum(self.no_quorum_message())
            await asyncio.sleep(0.05)

    async def _within(self, future: asyncio.Future[Any], timeout: float) -> Any:
        """`await future`, or TimeoutError after `timeout` seconds (at least 10 ms). One
        timer, where `asyncio.wait_for` adds a waiter future and callbacks around it."""
        timer = self.loop.call_later(max(timeout, 0.01), _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    # -- from the Raft thread ------------------------------------------------------------

    def _outcome(self, future: asyncio.Future[Any], result: Any, error: int) -> None:
        # Raft thread: an entry's callback. Inside a round of applied entries it waits
        # for the end of the round (RaftNode.applied_listeners); else it goes now.
        with self._hand_off_lock:
            self._outcomes.append((future, result, error))
        if not self.node.applying:
            self._hand_off()

    def _on_changes(self, changes: list[Change]) -> None:
        # Raft thread, under store.lock (the store's listener): note the tables someone
        # waits for; hand off as for `_outcome`.
        tables = {change.table for change in changes}
        interest = self._table_interest
        if not (self._revision_interest or "*" in tables or any(interest[t] for t in tables)):
            return
        with self._hand_off_lock:
            self._changed |= tables
        if not self.node.applying:
            self._hand_off()

    def _hand_off(self) -> None:
        # Raft thread: one call_soon_threadsafe for all that is pending, if not already due.
        with self._hand_off_lock:
            if self._hand_off_due or not (self._outcomes or self._changed):
                return
            self._hand_off_due = True
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Event loop: the outcomes first (their writers answer first), then the watchers.
        with self._hand_off_lock:
            outcomes, self._outcomes = self._outcomes, []
            changed, self._changed = self._changed, set()
            self._hand_off_due = False
        for future, result, error in outcomes:
            _settle(future, result, error)
        if changed:
            self._wake(changed)

    async def propose_ok(
        self, entry: Entry, timeout: float = 10.0, *, idempotent: bool = False
    ) -> dict[str, Any]:
        """Like `propose`, but a refused entry raises the matching error."""
        return raise_for_result(await self.propose(entry, timeout, idempotent=idempotent))

    async def barrier(self, timeout: float = 5.0) -> None:
        """Wait until this node has applied everything committed before the call, so a
        read of the store that follows is linearizable. By read index (raft/readindex.py:
        no log entry); through a barrier entry when the leader is of an older version."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self.has_leader():
                    await self._await_election(deadline)
                error = await self._read_index(deadline)
                if error is None:
                    return
                if error == "unsupported":
                    remaining = max(deadline - time.monotonic(), 0.01)
                    await self.propose(Entry(EntryType.BARRIER, {}), remaining, idempotent=True)
                    return
                if time.monotonic() >= deadline - 0.05:
                    raise TimeoutError
                await asyncio.sleep(0.02 if error == "not_ready" else 0.05)
        except (TimeoutError, Indeterminate, NoQuorum) as exc:
            if isinstance(exc, NoQuorum) or not self.node.status().get("has_quorum"):
                raise NoQuorum(
                    self.no_quorum_message() + ": a consistent read cannot be confirmed"
                ) from None
            raise Unavailable(
                f"the read could not be confirmed within {timeout:g}s (nothing was changed); retry"
            ) from None

    async def _read_index(self, deadline: float) -> str | None:
        """One try at a read index: None once this node has applied up to it, else the
        reason (readindex.READ_ERRORS). TimeoutError past `deadline`."""
        future: asyncio.Future[tuple[Any, Any]] = self.loop.create_future()

        def done(index: int | None, error: str | None) -> None:  # Raft thread
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self.loop.call_soon_threadsafe(_settle, future, index, error)

        self.node.read_index(done)
        _index, error = await asyncio.wait_for(future, max(deadline - time.monotonic(), 0.01))
        return str(error) if error is not None else None

    # -- membership (pysyncobj dynamic membership) -------------------------------------

    async def change_membership(self, op: str, raft_addr: str, wait: float) -> str:
        """Add or remove a Raft member. Returns "committed", or "pending" when the change
        was appended but not yet committed within `wait` seconds (adding a member to a
        one-node cluster commits only once the new member runs)."""
        future: asyncio.Future[tuple[Any, int]] = self.loop.create_future()

        def done(result: Any, error: int) -> None:
            self.loop.call_soon_threadsafe(_settle, future, result, error)

        if op == "add":
            self.node.addNodeToCluster(raft_addr, callback=done)
        else:
            self.node.removeNodeFromCluster(raft_addr, callback=done)
        try:
            _, error = await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            return "pending"
        if error == FAIL_REASON.SUCCESS:
            return "committed"
        if error == FAIL_REASON.REQUEST_DENIED:
            raise Conflict("another membership change is in progress; retry in a moment")
        raise Unavailable(f"membership change failed: {_FAIL_NAMES.get(error, error)}")

    def raft_members(self) -> set[str]:
        """The Raft configuration as this node last saw it (from the Raft thread)."""
        status = self.node.status()
        return set(status.get("peers", {})) | {status["self"]}

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.node.status()

    def has_leader(self) -> bool:
        status = self.node.status()
        return status.get("leader") is not None and status.get("has_quorum", False)

    def is_leader(self) -> bool:
        status = self.node.status()
        return status.get("leader") is not None and status.get("leader") == status.get("self")

    def no_quorum_message(self) -> str:
        status = self.node.status()
        peers = status.get("peers", {})
        window = self.node.heard_window
        up = 1 + sum(
            1
            for p in peers.values()
            if p["connected"] and p.get("heard_ago") is not None and p["heard_ago"] <= window
        )
        return (
            f"no quorum: this node reaches {up} of {len(peers) + 1} members "
            f"and knows no leader; writes cannot commit"
        )

    # -- watches ---------------------------------------------------------------------------

    def _wake(self, changed: set[str]) -> None:
        """Wake who waits for a new revision, and who waits for one of the `changed`
        tables (all of them on a reset, table "*")."""
        woken, self._revision_waiters = self._revision_waiters, set()
        if "*" in changed:
            tables, self._table_waiters = self._table_waiters, {}
            for waiters in tables.values():
                woken |= waiters
        else:
            for table in changed:
                woken |= self._table_waiters.pop(table, set())
        for waiter in woken:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_revision(self, after: int, timeout: float) -> bool:
        """Wait until the store's revision is above `after`; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self.store.lock:  # a change applied after this is handed off (interest)
                if self.store.revision > after:
                    return True
                if remaining <= 0:
                    return False
                self._revision_interest += 1
            # Registered before the next await: what is handed off after the check above
            # is delivered (on this loop) after this line, and wakes it.
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._revision_waiters.add(waiter)
            try:
                await self._within(waiter, remaining)
            except TimeoutError:
                return self.store.revision > after
            finally:
                self._revision_waiters.discard(waiter)
                with self.store.lock:
                    self._revision_interest -= 1

    async def watch(self, since: int, keepalive: float = 15.0) -> AsyncIterator[Change | None]:
        """Every change after revision `since`, in order, as it is applied; `None` after
        `keepalive` seconds without one. Raises `Gone` if that history is no longer kept
        (the caller re-reads the state and watches from the current revision)."""
        last = since
        while True:
            with self.store.lock:
                changes = self.store.changes_since(last)
            if changes is None:
                raise Gone(f"changes after revision {last} are no longer kept; re-read the state")
            for change in changes:
                last = change.revision
                yield change
            if not await self.wait_for_revision(last, keepalive):
                yield None

    async def wait_for_tables(self, tables: set[str], after: int, timeout: float) -> bool:
        """Wait until a change after revision `after` touches one of `tables` (or the
        store was reset); False on timeout. Agents use it so that unrelated writes (KV)
        do not wake them."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self.store.lock:  # as in wait_for_revision
                changes = self.store.changes_since(after)
                if changes is None or any(c.table in tables or c.table == "*" for c in changes):
                    return True
                if remaining <= 0:
                    return False
                after = self.store.revision
                self._table_interest.update(tables)
            waiter: asyncio.Future[None] = self.loop.create_future()
            for table in tables:
                self._table_waiters.setdefault(table, set()).add(waiter)
            try:
                with contextlib.suppress(TimeoutError):  # then the changes are looked at once more
                    await self._within(waiter, remaining)
            finally:
                for table in tables:
                    waiting = self._table_waiters.get(table)
                    if waiting is not None:
                        waiting.discard(waiter)
                        if not waiting:
                            del self._table_waiters[table]
                with self.store.lock:
                    self._table_interest.subtract(tables)

    def close(self) -> None:
        self._unsubscribe()


def _settle(future: asyncio.Future[Any], result: Any, error: Any) -> None:
    if not future.done():
        future.set_result((result, error))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
