"""Linearizable reads without a log entry (Raft thesis §6.4, "read index"), and what a node
has lately heard from its majority.

A consistent read used to propose a barrier entry through the log: one fsync on a
majority per read, and a log that grew with reads. Here, a read on the leader:

1. notes the leader's commit index (the *read index*) and its term; a leader that has not
   yet committed an entry of its own term (just elected) answers `not_ready` and the
   caller tries again in a moment (pysyncobj commits a no-op at once on election);
2. confirms that it is still the leader: it numbers its rounds of append messages (`rs`,
   carried in every `append_entries` it sends), starts a new round at once, and waits
   until a majority of members (itself included) have answered a message of that round
   or a later one, in the same term; a follower echoes in each `next_node_idx` the
   newest `rs` it received from that leader, and it only answers append messages of a
   term at least its own, so an echo proves the follower still followed this leader when
   the round was sent. All reads that arrive while a round is running share the next.
3. answers once it has applied up to the read index.

A read on a follower asks the leader for a read index over the Raft connection
(`read_index` / `read_index_response`) and answers once it has applied up to it (the
leader's confirmation round carried the commit index to it first, so this rarely waits).
A leader of an older version sends no `rs`: its followers then answer `unsupported` and
the caller falls back to the barrier entry; a follower of an older version ignores `rs`
and never echoes it, so with a majority of older members reads fall back too (by the
timeout of the round, `unconfirmed`).

Clocks play no part (no lease): a leader cut off from its majority never confirms a
round, and its pending reads fail when it steps down (check-quorum) or time out.

`heard` is the other half: the time of the last message from each member. A node that has
heard from fewer than a majority within `HEARD_WINDOW` cannot commit anything and knows
it: `hears_majority()` turns `has_quorum` off in the status, so new writes and reads are
refused at once (503 `no_quorum`) instead of waiting for an election that cannot come.
The window is the longest election timeout plus a heartbeat: a member that hears nothing
from the leader hears the others' pre-votes within that, so an ordinary election does not
look like a partition.

Callbacks run on the Raft thread as `callback(index, error)`: `error` is None on success,
else one of READ_ERRORS. It uses pysyncobj's name-mangled state (listed in `RELIED_ON` in
raft/pinning.py).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
READ_EXPIRY = 5.0  # a read not confirmed by then gives up (the caller's own timeout is shorter)
READ_ERRORS = ("not_leader", "no_leader", "not_ready", "unsupported", "unconfirmed")
ReadCallback = Callable[[int | None, str | None], None]


@dataclasses.dataclass
class _Read:
    callback: ReadCallback
    expires: float
    index: int = 0  # the read index, once known
    term: int = 0
    round: int = 0  # the round of append messages that must be answered by a majority
    leader: Any = None  # follower: the leader it was asked of
    wait_apply: bool = True  # False for a follower's request: the follower applies, not us


class ReadIndex:
    """Mixed into RaftNode (a SyncObj): read index on the leader, read requests from
    followers, and the times each member was last heard from."""

    _SyncObj__raftState: int
    _SyncObj__raftCurrentTerm: int
    _SyncObj__raftCommitIndex: int
    _SyncObj__raftLastApplied: int
    _SyncObj__raftLeader: Any
    _SyncObj__otherNodes: set[Any]

    def _readindex_setup(self, heard_window: float, enabled: bool = True) -> None:
        """`enabled=False` ([raft] readIndex = false) makes this leader behave as one of an
        older version (no `rs`, read requests answered `unsupported`): a test's control."""
        self.readindex_enabled = enabled
        self.heard_window = heard_window
        self.heard: dict[Any, float] = {}
        self._heard_since = time.monotonic()  # a member not heard from yet counts from here
        self._round = 0  # the newest round of append messages this node sent as leader
        self._round_due = False
        self._acked: dict[Any, int] = {}  # leader: newest round each follower echoed
        self._round_from: dict[Any, int] = {}  # follower: newest round from each leader
        self._leader_tags = False  # follower: whether the leader's appends carry `rs`
        self._confirming: list[_Read] = []  # leader: waiting for a majority's echo
        self._applying: list[_Read] = []  # waiting to apply up to the read index
        self._asked: dict[int, _Read] = {}  # follower: read requests sent to the leader
        self._asked_ids = itertools.count(1)
        self._incoming: collections.deque[ReadCallback] = collections.deque()
        self.reads_confirmed = 0
        self.read_rounds = 0

    # -- what members were heard from ---------------------------------------------------

    def hears_majority(self, now: float | None = None) -> bool:
        """Whether this node heard, within `heard_window`, from its leader (which steps
        down when it stops hearing from a majority: check-quorum), or else from a
        majority of members (itself included)."""
        now = time.monotonic() if now is None else now
        since = now - self.heard_window
        leader = self._SyncObj__raftLeader
        if (
            leader is not None
            and self._SyncObj__raftState != LEADER
            and self.heard.get(leader, self._heard_since) >= since
        ):
            return True
        others = list(self._SyncObj__otherNodes)
        heard = 1 + sum(1 for n in others if self.heard.get(n, self._heard_since) >= since)
        return heard > (len(others) + 1) / 2

    # -- asking for a read index (any thread) ---------------------------------------------

    def read_index(self, callback: ReadCallback) -> None:
        """Find a read index and wait until this node has applied up to it;
        `callback(index, error)` on the Raft thread."""
        self._incoming.append(callback)
        self._wake()

    def _wake(self) -> None:
        raise NotImplementedError

    def _send_append_entries(self) -> None:
        raise NotImplementedError

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _entry_term(self, index: int) -> int | None:
        raise NotImplementedError

    # -- on the Raft thread -----------------------------------------------------------------

    def _readindex_tick(self) -> None:
        """Run in every tick, after the log is applied and before the network poll: take
        new reads, start a round if one is due, finish what is confirmed and applied."""
        now = time.monotonic()
        while self._incoming:
            self._begin_read(_Read(self._incoming.popleft(), now + READ_EXPIRY))
        if self._round_due:
            self._round_due = False
            if self._SyncObj__raftState == LEADER:
                self._round += 1
                self.read_rounds += 1
                self._send_append_entries()
        self._settle_confirming(now)
        self._settle_applying(now)
        leader = self._SyncObj__raftLeader
        for request_id, read in list(self._asked.items()):
            if read.leader != leader or now >= read.expires:
                del self._asked[request_id]
                read.callback(None, "not_leader" if read.leader != leader else "unconfirmed")

    def _begin_read(self, read: _Read) -> None:
        leader = self._SyncObj__raftLeader
        if self._SyncObj__raftState == LEADER:
            self._lead_read(read)
        elif leader is None:
            read.callback(None, "no_leader")
        elif not self._leader_tags:
            read.callback(None, "unsupported")
        else:
            request_id = next(self._asked_ids)
            read.leader = leader
            self._asked[request_id] = read
            self._send(leader, {"type": "read_index", "id": request_id})

    def _lead_read(self, read: _Read) -> None:
        if not self.readindex_enabled:
            read.callback(None, "unsupported")
            return
        if self._SyncObj__raftState != LEADER:
            read.callback(None, "not_leader")
            return
        index, term = self._SyncObj__raftCommitIndex, self._SyncObj__raftCurrentTerm
        if self._entry_term(index) != term:
            read.callback(None, "not_ready")
            return
        read.index, read.term, read.round = index, term, self._round + 1
        self._round_due = True
        self._confirming.append(read)
        if not self._SyncObj__otherNodes:  # alone: its own word is the majority
            self._settle_confirming(time.monotonic())

    def _settle_confirming(self, now: float) -> None:
        if not self._confirming:
            return
        leading = self._SyncObj__raftState == LEADER
        others = list(self._SyncObj__otherNodes)
        still = []
        for read in self._confirming:
            if not leading or read.term != self._SyncObj__raftCurrentTerm:
                read.callback(None, "not_leader")
            elif (
                1 + sum(1 for n in others if self._acked.get(n, 0) >= read.round)
                > (len(others) + 1) / 2
            ):
                self.reads_confirmed += 1
                self._apply_then_answer(read)
            elif now >= read.expires:
                read.callback(None, "unconfirmed")
            else:
                still.append(read)
        self._confirming = still

    def _apply_then_answer(self, read: _Read) -> None:
        if not read.wait_apply or self._SyncObj__raftLastApplied >= read.index:
            read.callback(read.index, None)
        else:
            self._applying.append(read)

    def _settle_applying(self, now: float) -> None:
        if not self._applying:
            return
        applied = self._SyncObj__raftLastApplied
        still = []
        for read in self._applying:
            if applied >= read.index:
                read.callback(read.index, None)
            elif now >= read.expires:
                read.callback(None, "unconfirmed")
            else:
                still.append(read)
        self._applying = still

    # -- messages -----------------------------------------------------------------------------

    def _tag_outgoing(self, node: Any, message: dict[str, Any]) -> None:
        """Add the round to append messages this leader sends, and echo the leader's
        round in acknowledgements."""
        kind = message.get("type")
        if kind == "append_entries":
            if self.readindex_enabled and self._SyncObj__raftState == LEADER:
                message["rs"] = self._round
        elif kind == "next_node_idx":
            heard = self._round_from.get(node)
            if heard is not None:
                message["rs"] = heard

    def _readindex_message(self, node: Any, message: dict[str, Any]) -> bool:
        """Look at a message before pysyncobj does; True: it was ours, do not pass it on."""
        self.heard[node] = time.monotonic()
        kind = message.get("type")
        if kind == "append_entries":
            if message.get("term", -1) >= self._SyncObj__raftCurrentTerm:
                tagged = isinstance(message.get("rs"), int)
                self._leader_tags = tagged
                if tagged:
                    self._round_from[node] = message["rs"]
                else:
                    self._round_from.pop(node, None)
            return False
        if kind == "next_node_idx":
            echoed = message.get("rs")
            if isinstance(echoed, int) and echoed > self._acked.get(node, 0):
                self._acked[node] = echoed
            return False  # pysyncobj counts it too; confirmations are settled in the tick
        if kind == "read_index":
            request_id = message.get("id")
            if isinstance(request_id, int):
                reply = self._reply_to(node, request_id)
                self._lead_read(_Read(reply, time.monotonic() + READ_EXPIRY, wait_apply=False))
            return True
        if kind == "read_index_response":
            read = self._asked.pop(message.get("id"), None)  # type: ignore[arg-type]
            if read is None:
                return True
            error, index = message.get("error"), message.get("index")
            if error is None and isinstance(index, int):
                read.index = index
                self._apply_then_answer(read)
            else:
                read.callback(None, error if error in READ_ERRORS else "unconfirmed")
            return True
        return False

    def _reply_to(self, node: Any, request_id: int) -> ReadCallback:
        def reply(index: int | None, error: str | None) -> None:
            reply = {"type": "read_index_response", "id": request_id}
            self._send(node, {**reply, "index": index, "error": error})

        return reply
