"""The pysyncobj node: one `@replicated` method, a durable journal, our own tick loop.

What this module adds to pysyncobj 0.3.17, and why:

* **Exactly one replicated method** (`apply_entry`): pysyncobj numbers replicated methods
  by sorting their names, so a second one would renumber the first and break old logs.
* **Durability**: the journal is `DurableJournal` (fsync). Followers hold back their
  acknowledgements (`next_node_idx` messages) while the journal has unsynced entries; the
  tick loop syncs once per round of received messages and then releases them, so entries
  that arrive together share one fsync. The leader syncs before it polls the network,
  that is before any acknowledgement can make it count its own copy toward a commit.
* **Speed**: `appendEntriesUseBatch=False` (otherwise every write waits for the 100 ms
  append timer), our own tick thread (`autoTick=False`) so syncs sit at the right point.
  With batching off pysyncobj sends one append message per follower for *every* command
  it takes from its queue; here the commands of one tick are appended first and sent in
  one message per follower (a lone write still leaves at once). The thread is woken once
  per burst of proposals, not once per proposal. The Raft port is encrypted with AES-GCM
  (`raft/wire.py`) instead of Fernet, which cost 41% of the leader's Raft thread.
* **No needless truncation**: pysyncobj's leader lowers `nextIndex` to what a follower
  acknowledged, even when it has already sent more; it then re-sends entries the follower
  has, and the follower deletes and re-adds them (with fsync, a rewrite each time). Here
  a successful acknowledgement never lowers `nextIndex`, and a follower drops the leading
  entries of an append that it already holds with the same term (Raft truncates only on
  a conflicting term).
* **Snapshots** through our serializer (`FSM.snapshot`), never pickle of the object.
* The Raft port always has a password (AES-GCM, `raft/wire.py`); messages from a peer
  without the cluster secret are dropped before anything is unpickled.

These overrides reach pysyncobj's private, name-mangled internals (`RELIED_ON`, in
raft/pinning.py), so pyproject.toml pins pysyncobj 0.3.17 and importing this module checks
the installed one: a release that renamed a private would otherwise switch a fix off
without a word. The transport that holds acknowledgements is raft/transport.py.

It knows the FSM, not the API.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pysyncobj.syncobj as _syncobj_module
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode

from symphonyd.raft import guard, pickling
from symphonyd.raft.fsm import FSM
from symphonyd.raft.journal import DurableJournal, SyncFailed
from symphonyd.raft.pinning import check_pysyncobj
from symphonyd.raft.prevote import PreVote
from symphonyd.raft.readindex import LEADER, ReadIndex
from symphonyd.raft.snapshots import SnapshotWriter, read_snapshot_file
from symphonyd.raft.transport import DurableTransport
from symphonyd.raft.wire import AeadEncryptor

log = logging.getLogger("symphonyd.raft")

check_pysyncobj(_syncobj_module)
guard.install()  # the Raft port's bound before authentication (raft/guard.py)
pickling.install()  # bytes pickled as bytes, not as UTF-8 text (raft/pickling.py)

RAFT_STATES = {0: "follower", 1: "candidate", 2: "leader"}
APPEND_BATCH_BYTES = 8 << 20  # at most this much of the log in one append message
LOG_MAX_BYTES = 256 << 20  # the Raft log held in RAM before a snapshot is forced
COMPACTION_RETRY = 5.0  # seconds before asking again while the log stays heavy
HOST_ERROR_EVERY = 10.0  # seconds between two log lines about the same host failure
HAND_OVER_FOR = 5.0  # seconds a leader whose journal failed keeps asking for a transfer
Callback = Callable[[Any, int], None]


_construct_lock = threading.Lock()


class RaftNode(PreVote, ReadIndex, SyncObj):
    """A pysyncobj node whose state is an FSM and whose log is durable."""

    def __init__(
        self,
        *,
        self_addr: str,
        peers: list[str],
        raft_dir: str,
        secret: str,
        fsm: FSM,
        accepts: Sequence[str] = (),
        bind_addr: str | None = None,
        tuning: dict[str, Any] | None = None,
        log_max_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        self.fsm = fsm
        self.log_max_bytes = log_max_bytes
        self._compaction_asked = 0.0
        self.raft_dir = raft_dir
        os.makedirs(raft_dir, mode=0o700, exist_ok=True)
        self.journal = DurableJournal(raft_dir)
        self.snapshot_path = os.path.join(raft_dir, "snapshot")
        self.snapshots = SnapshotWriter(self.snapshot_path)
        if os.path.exists(self.snapshot_path):
            last, prev, _members = self._snapshot_entries(self.snapshot_path)
            self.journal.align_with_snapshot(prev, last)
        settings: dict[str, Any] = {
            "raftMinTimeout": 0.4,
            "raftMaxTimeout": 1.0,
            "appendEntriesPeriod": 0.1,
            "connectionTimeout": 3.5,
            "connectionRetryTime": 1.0,
            "leaderFallbackTimeout": 1.0,  # check-quorum: one election timeout
            "commandsQueueSize": 20_000,
            # above the largest entry (Cluster.MAX_ENTRY_BYTES): pysyncobj's cutting of
            # larger ones into chunks marks the last chunk wrongly (raft/pickling.py)
            "appendEntriesBatchSizeBytes": APPEND_BATCH_BYTES,
            "logCompactionMinEntries": 20_000,
            "logCompactionMinTime": 600,
            "maxBindRetries": 5,
            "bindRetryTime": 0.2,
        }
        settings.update(tuning or {})
        prevote = bool(settings.pop("preVote", True))  # ours, not SyncObjConf names
        readindex = bool(settings.pop("readIndex", True))
        conf = SyncObjConf(
            password=secret,
            autoTick=False,
            appendEntriesUseBatch=False,
            dynamicMembershipChange=True,
            fullDumpFile=self.snapshot_path,
            serializer=self._write_snapshot,
            serializeChecker=self.snapshots.state,
            deserializer=self._read_snapshot,
            bindAddress=bind_addr,
            useFork=False,
            onStateChanged=self._on_state_changed,
            **settings,
        )
        transport_class = functools.partial(DurableTransport, journal=self.journal)
        self._wake_pending = False
        self._commit_send_due = False  # an applied round's commit index rides the next send
        # pysyncobj builds its journal and its encryptor with module-level factories:
        # hand it ours (every connection then uses the AES-GCM encryptor from the start).
        with _construct_lock:
            factories = (_syncobj_module.createJournal, _syncobj_module.getEncryptor)
            _syncobj_module.createJournal = lambda _path: self.journal
            _syncobj_module.getEncryptor = lambda password: AeadEncryptor(password, accepts)
            try:
                super().__init__(self_addr, peers, conf, transportClass=transport_class)
            finally:
                _syncobj_module.createJournal, _syncobj_module.getEncryptor = factories
        self.transport: DurableTransport = self._SyncObj__transport
        self._prevote_setup(settings["raftMinTimeout"], settings["raftMaxTimeout"], prevote)
        heard_window = settings["raftMaxTimeout"] + settings["appendEntriesPeriod"]
        self._readindex_setup(heard_window, readindex)
        self.transport.outgoing = self._tag_outgoing
        self.addOnTickCallback(self._sync_before_poll)
        self.addOnTickCallback(self._readindex_tick)  # after the apply, before the poll
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._tick_loop, name="raft", daemon=True)
        self._status: dict[str, Any] = {}
        self._status_at = 0.0
        self.role_listeners: list[Callable[[str], None]] = []
        self.trimmed_entries = 0
        self.host_errors = 0  # ticks that failed on the host (OSError): a full disk, ...
        self._membership_adopted = False  # _adopt_logged_membership ran
        self.fatal: str | None = None  # why the Raft thread stopped for good (a failed sync)
        self.fatal_listeners: list[Callable[[str], None]] = []  # run on the Raft thread
        self.leadership_handed_over = 0  # transfers asked for: this leader's journal failed
        self._hand_over_until = self._handed_over_at = -1.0
        self._host_error_logged = -HOST_ERROR_EVERY
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        # Run on the Raft thread after each round of applying committed entries; while a
        # round runs, `applying` is True (raft/cluster.py hands a round's outcomes and
        # store changes to asyncio in one wake-up).
        self.applied_listeners: list[Callable[[], None]] = []
        self.applying = False
        self._refresh_status(force=True)

    # -- the one replicated method ----------------------------------------------------------

    @replicated
    def apply_entry(self, data: bytes) -> Any:
        return self.fsm.apply(data)

    def submit(self, data: bytes, callback: Callback) -> None:
        """Propose an encoded entry; `callback(result, fail_reason)` runs on the Raft thread."""
        self.apply_entry(data, callback=callback)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.snapshots.wait(timeout=30)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the Raft thread (pysyncobj's state is not thread-safe)."""
        self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        self._SyncObj__pipeNotifier.notify()

    def transfer_leadership(self) -> None:
        self.call_soon(self.transferLeadership)

    def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._hand_over()
                self._prevote_tick()
                self.doTick(0.05)
                if not self._membership_adopted and not self._SyncObj__needLoadDumpFile:
                    self._adopt_logged_membership()
                self._sync_and_release()
                guard.sweep(self.transport)
                while self._calls:
                    self._calls.popleft()()
                self._refresh_status()
            except SyncFailed as exc:  # before OSError: never retried (raft/journal.py)
                self._stop_on_fatal(exc)
                break
            except OSError as exc:  # the host: a full disk, an I/O error
                self._report_host_error(exc)
                self._refresh_status()  # its role still changes: status must not lag
                time.sleep(0.2)
            except Exception:
                log.exception("raft tick failed")
                time.sleep(0.05)
        try:
            if self.fatal is None:  # else nothing more is acknowledged, nor synced
                self._sync_and_release()
        finally:
            self._doDestroy()

    def _hand_over(self) -> None:
        """For HAND_OVER_FOR seconds after this leader failed to write its journal, ask
        every 0.3 s for a transfer (pysyncobj refuses one while no follower has every
        entry the leader has)."""
        now = time.monotonic()
        due = now < self._hand_over_until and now - self._handed_over_at >= 0.3
        if due and self._isLeader():
            self._handed_over_at = now
            self.leadership_handed_over += 1
            self.transferLeadership()

    def _adopt_logged_membership(self) -> None:
        """Raft: a server uses the latest configuration in its log, committed or not.
        pysyncobj takes a membership entry at append time, but after a restart only once
        it applies it, i.e. once a leader has told it the entry is committed. A leader
        killed within a second of a join (before its commit index and its member list
        were saved) came back not knowing the new member; when that member led and it
        was this node's turn to dial, it heard no leader for good (found by
        tests/test_cluster.py). Run once, after the snapshot is loaded."""
        self._membership_adopted = True
        applied = self._SyncObj__raftLastApplied
        for command, idx, _term in list(self.journal):
            if idx <= applied:
                continue
            request = self._SyncObj__parseChangeClusterRequest(command)
            if request is not None and self._SyncObj__doChangeCluster(request):
                log.info("member list from the journal: %s %s", request[0], request[1])

    def _stop_on_fatal(self, exc: SyncFailed) -> None:
        """The journal lost what its failed sync covered: this node acknowledges nothing
        more (the acknowledgements held for that sync are dropped), its Raft thread ends,
        and the listeners (the daemon: exit with status 1) are told."""
        self.fatal = str(exc)
        self.transport.drop_held()
        log.critical(
            "%s; this node stops so as not to acknowledge entries that may not be on disk "
            "(its journal is cut back to its last good sync; after a restart it catches up "
            "from the leader). Check the disk (dmesg) before restarting it.",
            self.fatal,
        )
        for listener in self.fatal_listeners:
            try:
                listener(self.fatal)
            except Exception:
                log.exception("fatal listener failed")

    def _report_host_error(self, exc: OSError) -> None:
        """One line per HOST_ERROR_EVERY seconds, not a traceback per tick: an entry that
        cannot be written is not acknowledged (nothing is lost: the leader sends it again),
        so this node falls behind until the host is fixed, and says why. A leader that
        cannot write its own journal commits nothing: it hands leadership to a follower
        that has every entry it has (`_hand_over`), and falls behind as one."""
        self.host_errors += 1
        now = time.monotonic()
        if self._isLeader():
            if self._hand_over_until < now:
                log.warning("this leader cannot write its journal: handing leadership over")
            self._hand_over_until = now + HAND_OVER_FOR
        if now - self._host_error_logged < HOST_ERROR_EVERY:
            return
        self._host_error_logged = now
        log.error(
            "the Raft journal in %s cannot be written: %s (%d times so far); this node "
            "falls behind until that is fixed, and catches up from the leader afterwards",
            self.raft_dir,
            exc.strerror or exc,
            self.host_errors,
        )

    def _sync_before_poll(self) -> None:
        # Runs inside doTick right before the network poll: entries this node appended
        # as leader are on disk before any acknowledgement is counted.
        self.journal.sync()

    def _sync_and_release(self) -> None:
        self.journal.sync()
        self.transport.release_held()
        self._compact_when_heavy()

    def _compact_when_heavy(self) -> None:
        """pysyncobj compacts by entry count and age only: 20,000 entries of 512 KiB
        would be 10 GB in RAM first. Past `log_max_bytes` held, ask for a snapshot now
        (again after COMPACTION_RETRY if the log is still heavy: one may be running)."""
        if self.journal.held_bytes <= self.log_max_bytes:
            return
        now = time.monotonic()
        if now - self._compaction_asked >= COMPACTION_RETRY:
            self._compaction_asked = now
            log.info(
                "raft log holds %d MiB (over %d MiB): compacting",
                self.journal.held_bytes >> 20,
                self.log_max_bytes >> 20,
            )
            self.forceLogCompaction()

    def _on_state_changed(self, old: int, new: int) -> None:
        role = RAFT_STATES.get(new, str(new))
        log.info("raft role: %s -> %s", RAFT_STATES.get(old, old), role)
        for listener in list(self.role_listeners):
            try:
                listener(role)
            except Exception:
                log.exception("role listener failed")

    # -- proposals: one wake-up per burst, one append message per tick -------------------

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:
        """Queue a command (any thread); wake the Raft thread unless a wake-up is pending."""
        if commandType is not None:
            command = bytes([commandType]) + command
        try:
            self._SyncObj__commandsQueue.put_nowait((command, callback))
        except queue.Full:
            self._SyncObj__callErrCallback(FAIL_REASON.QUEUE_FULL, callback)
            return
        if not self._wake_pending:
            self._wake_pending = True
            self._SyncObj__pipeNotifier.notify()

    def _checkCommandsToApply(self) -> None:
        # Cleared before the queue is drained, so a command queued after the drain always
        # finds it False and wakes the thread again.
        self._wake_pending = False
        commit_send_due, self._commit_send_due = self._commit_send_due, False
        due: list[bool] = []
        # pysyncobj calls self.__sendAppendEntries() after each command it appends: an
        # instance attribute under the mangled name shadows it for this call only.
        self._SyncObj__sendAppendEntries = lambda: due.append(True)
        try:
            super()._checkCommandsToApply()
        finally:
            del self._SyncObj__sendAppendEntries
        if due or commit_send_due:
            self._SyncObj__sendAppendEntries()
        if due and not self._SyncObj__otherNodes:
            # A leader alone commits what it appended at the start of the next tick,
            # and no acknowledgement will wake the poll: without this every write on
            # a one-node cluster waited out the poll's 50 ms. The journal is still
            # synced first (the tick's callbacks run before the poll).
            self._SyncObj__pipeNotifier.notify()

    def _SyncObj__applyLogEntries(self) -> bool:
        """pysyncobj applies what is committed, calling each entry's callback as it goes;
        then `applied_listeners` run once for the whole round.

        A leader that applied something sends an append message at once, to carry the
        new commit index. When proposals are queued, `_checkCommandsToApply` sends one
        in the same tick anyway (with the new entries and the same commit index): that
        one goes alone, one message per follower where there were two."""
        self.applying = True
        try:
            send_now = bool(super()._SyncObj__applyLogEntries())
        finally:
            self.applying = False
            for listener in self.applied_listeners:
                try:
                    listener()
                except Exception:
                    log.exception("applied listener failed")
        if send_now and self._wake_pending and self._SyncObj__raftState == LEADER:
            self._commit_send_due = True
            return False
        return send_now

    # -- what the pre-vote mixin needs of pysyncobj ------------------------------------

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        self.transport.send(node, message)

    def _last_log_index(self) -> int:
        return int(self._SyncObj__getCurrentLogIndex())

    def _last_log_term(self) -> int:
        return int(self._SyncObj__getCurrentLogTerm())

    # -- what the read-index mixin needs ------------------------------------------------

    def _send_append_entries(self) -> None:
        self._SyncObj__sendAppendEntries()

    def _entry_term(self, index: int) -> int | None:
        journal = self.journal
        if len(journal) == 0 or not journal[0][1] <= index <= journal[-1][1]:
            return None
        return int(journal[index - journal[0][1]][2])

    # -- fixes to pysyncobj's append handling -------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        handle = super()._SyncObj__onMessageReceived
        if not isinstance(message, dict):
            return handle(node, message)
        if self._readindex_message(node, message) or self._prevote_message(node, message):
            return None
        kind = message.get("type")
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            handle(node, message)
            if before is not None and next_index.get(node, before) < before:
                next_index[node] = before
            return None
        if kind == "append_entries" and "prevLogIdx" in message and "transmission" not in message:
            message = self._without_entries_already_held(message)
        return handle(node, message)

    def _without_entries_already_held(self, message: dict[str, Any]) -> dict[str, Any]:
        journal = self.journal
        if len(journal) == 0:
            return message
        first, last = journal[0][1], journal[-1][1]
        prev, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        if prev is None or prev < first or prev > last or journal[prev - first][2] != prev_term:
            return message  # pysyncobj answers "no match" itself
        entries = list(message.get("entries") or [])
        skipped = 0
        for _command, idx, term in entries:
            if idx > last or journal[idx - first][2] != term:
                break
            prev, prev_term = idx, term
            skipped += 1
        if skipped == len(entries) and prev < last:
            # Everything sent is already here and more follows. The tail may be kept only
            # if it is known to match the leader: an entry of the leader's own term can
            # only have come from this leader, so the whole prefix up to it matches.
            if journal[-1][2] != message["term"]:
                return message
            prev, prev_term = last, journal[-1][2]
        if prev == message["prevLogIdx"]:
            return message
        self.trimmed_entries += skipped
        trimmed = dict(message)
        trimmed["entries"] = entries[skipped:]
        trimmed["prevLogIdx"], trimmed["prevLogTerm"] = prev, prev_term
        return trimmed

    # -- snapshots through the FSM --------------------------------------------------------

    def _write_snapshot(self, _tmp_path: str, data: Any) -> None:
        # Raft thread: capture the state here, write it on the writer's thread
        # (raft/snapshots.py); pysyncobj compacts once `snapshots.state()` says SUCCESS.
        last_entry, prev_entry, members = data
        members_ids = [n.id for n in members]
        started = time.perf_counter()
        captured = self.fsm.capture()
        self.snapshots.capture_seconds = time.perf_counter() - started
        self.snapshots.start(last_entry, prev_entry, members_ids, captured, self.fsm.encode)

    def _read_snapshot(self, path: str) -> tuple[Any, Any, list[TCPNode]]:
        with open(path, "rb") as f:
            os.fsync(f.fileno())  # it may have just arrived from the leader
        last, prev, members = self._snapshot_entries(path, restore=True)
        # pysyncobj filters its own node out with `node != selfNode`, which only works on
        # Node objects: a plain address would make this node its own peer.
        return last, prev, [TCPNode(address) for address in members]

    def _snapshot_entries(self, path: str, restore: bool = False) -> tuple[Any, Any, list[str]]:
        """The snapshot's last and previous log entries and its members; with `restore`,
        load the FSM from it too."""
        snapshot = read_snapshot_file(path)
        if restore:
            self.fsm.restore(snapshot.state)
        return snapshot.last, snapshot.prev, snapshot.members

    # -- status ------------------------------------------------------------------------------

    def _refresh_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < 0.05:
            return
        raw = self.getStatus()
        leader = raw.get("leader")
        peers = {}
        for node in self.otherNodes:
            heard = self.heard.get(node)
            peers[node.id] = {
                "connected": self.isNodeConnected(node),
                "heard_ago": None if heard is None else round(now - heard, 3),
            }
        hears_majority = self.hears_majority(now)
        self._status = {
            "self": raw["self"].id if raw.get("self") is not None else None,
            "role": RAFT_STATES.get(raw["state"], str(raw["state"])),
            "leader": leader.id if leader is not None else None,
            # connected to a majority, and heard from it (or from a leader) just now
            "has_quorum": bool(raw["has_quorum"]) and hears_majority,
            "hears_majority": hears_majority,
            "heard_window": self.heard_window,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "last_applied": raw["last_applied"],
            "log_length": raw["log_len"],
            "peers": peers,
            "journal_syncs": self.journal.sync_count,
            "journal_synced_entries": self.journal.synced_entries,
            "journal_bytes": self.journal.size_bytes,
            "trimmed_entries": self.trimmed_entries,
            "host_errors": self.host_errors,
            "leadership_handed_over": self.leadership_handed_over,
            "fatal": self.fatal,
            "prevote_rounds": self.prevote_rounds,
            "prevotes_denied": self.prevotes_denied,
            "snapshots_written": self.snapshots.written,
            "snapshot_seconds": round(self.snapshots.last_seconds, 3),  # off the Raft thread
            "snapshot_capture_seconds": round(self.snapshots.capture_seconds, 4),  # on it
            "read_rounds": self.read_rounds,
            "reads_confirmed": self.reads_confirmed,
            "ready": self.isReady(),
        }
        self._status_at = now

    def status(self) -> dict[str, Any]:
        """A recent (at most ~50 ms old) copy of the node's Raft status."""
        return dict(self._status)
