"""Pre-vote for pysyncobj (Raft thesis §9.6): a node asks the others whether they would vote
for it before it starts an election, so a node cut off from the leader (a partition that
drops packets, a paused VM) does not raise its term over and over and then, when it comes
back, depose a healthy leader with it.

pysyncobj 0.3.17 starts an election as soon as its election deadline passes. Here the
deadline is kept in the future on every tick, and this mixin runs the election timer
instead: when it fires, the node sends `pre_vote` (the term it would stand for and its
last log entry) to every member; a member grants it only if it has not heard from a
leader within the minimum election timeout, is not the leader itself, and the asker's log
is at least as up to date as its own. With a majority of grants (itself included) the
node lets pysyncobj run its ordinary election on the next tick. A pre-vote changes no term
and no vote. A leadership transfer (`timeout_now` from the leader) skips the pre-vote, as
it is meant to win.

Members of a version before pre-vote ignore the two message types: a cluster where fewer
than a majority speak it still elects among the older members (which do not pre-vote).

It uses pysyncobj's name-mangled state, like raft/node.py (listed in `RELIED_ON`, raft/pinning.py).
"""

from __future__ import annotations

import random
import time
from typing import Any

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2  # pysyncobj's _RAFT_STATE
NEVER = float("inf")


class PreVote:
    """Mixed into RaftNode (a SyncObj): the election timer with a pre-vote round."""

    _SyncObj__raftState: int
    _SyncObj__raftCurrentTerm: int
    _SyncObj__raftElectionDeadline: float
    _SyncObj__otherNodes: set[Any]

    def _prevote_setup(self, min_timeout: float, max_timeout: float, enabled: bool = True) -> None:
        """`enabled=False` ([raft] preVote = false) leaves elections to pysyncobj alone (a
        test's control); pre-votes of others are still answered."""
        self.prevote_enabled = enabled
        self._election_min, self._election_max = min_timeout, max_timeout
        self._leader_seen = time.monotonic()  # last word from a current leader
        self._election_at = self._leader_seen + self._election_timeout()
        self._round_term: int | None = None  # the term the running pre-vote asks for
        self._granted: set[Any] = set()
        self._election_allowed = False
        self._allowed_until = 0.0  # a granted election not started by then is dropped
        self.prevote_rounds = 0
        self.prevotes_denied = 0  # pre-votes this node refused to others

    def _election_timeout(self) -> float:
        return random.uniform(self._election_min, self._election_max)

    def _majority(self) -> int:
        return (len(self._SyncObj__otherNodes) + 1) // 2 + 1

    # -- the timer, run before each tick ---------------------------------------------------

    def _prevote_tick(self) -> None:
        if not self.prevote_enabled:
            return
        now = time.monotonic()
        state = self._SyncObj__raftState
        if state == LEADER:
            self._leader_seen = now
            self._election_at = now + self._election_timeout()
            self._election_allowed = False
            self._round_term = None
            self._SyncObj__raftElectionDeadline = NEVER
            return
        if self._election_allowed:
            if (
                state == CANDIDATE
                and self._round_term is not None
                and (self._SyncObj__raftCurrentTerm >= self._round_term)
            ):
                # pysyncobj stood for election: a failed one is retried by this timer
                self._election_allowed = False
                self._round_term = None
                self._election_at = now + self._election_timeout()
            elif now < self._allowed_until:
                self._SyncObj__raftElectionDeadline = 0.0
                return
            else:  # not started in time (connected to no one): a leader may be back
                self._election_allowed = False
        self._SyncObj__raftElectionDeadline = NEVER
        if now >= self._election_at:
            self._election_at = now + self._election_timeout()
            self._start_round()
            if self._election_allowed:  # alone: its own grant is the majority
                self._SyncObj__raftElectionDeadline = 0.0

    def _start_round(self) -> None:
        self.prevote_rounds += 1
        self._round_term = self._SyncObj__raftCurrentTerm + 1
        self._granted = {None}  # this node's own grant
        if len(self._granted) >= self._majority():
            self._allow_election()
            return
        message = {
            "type": "pre_vote",
            "term": self._round_term,
            "last_log_index": self._last_log_index(),
            "last_log_term": self._last_log_term(),
        }
        for node in list(self._SyncObj__otherNodes):
            self._send(node, message)

    def _allow_election(self) -> None:
        self._election_allowed = True
        self._allowed_until = time.monotonic() + self._election_max

    # -- messages -----------------------------------------------------------------------------

    def _prevote_message(self, node: Any, message: dict[str, Any]) -> bool:
        """Look at a message before pysyncobj does; True: it was ours, do not pass it on."""
        kind = message.get("type")
        if kind == "append_entries" and message.get("term", -1) >= self._SyncObj__raftCurrentTerm:
            self._leader_seen = time.monotonic()
            self._election_at = self._leader_seen + self._election_timeout()
            self._election_allowed = False
            return False
        if kind == "timeout_now" and self.prevote_enabled:  # the leader hands over: no pre-vote
            self._round_term = self._SyncObj__raftCurrentTerm + 1
            self._allow_election()
            return False
        if kind == "pre_vote":
            granted = self._would_vote(message)
            if not granted:
                self.prevotes_denied += 1
            reply = {"type": "pre_vote_response", "term": message.get("term"), "granted": granted}
            self._send(node, reply)
            return True
        if kind == "pre_vote_response":
            if message.get("granted") and message.get("term") == self._round_term:
                self._granted.add(node)
                if len(self._granted) >= self._majority():
                    self._allow_election()
            return True
        return False

    def _would_vote(self, message: dict[str, Any]) -> bool:
        term, index, log_term = (
            message.get("term"),
            message.get("last_log_index"),
            message.get("last_log_term"),
        )
        if not (isinstance(term, int) and isinstance(index, int) and isinstance(log_term, int)):
            return False
        if self._SyncObj__raftState == LEADER:
            return False
        if time.monotonic() - self._leader_seen < self._election_min:
            return False  # a leader was heard from just now
        if term <= self._SyncObj__raftCurrentTerm:
            return False
        mine = (self._last_log_term(), self._last_log_index())
        return (log_term, index) >= mine

    # -- pysyncobj's internals this needs (RaftNode provides them) --------------------------

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _last_log_index(self) -> int:
        raise NotImplementedError

    def _last_log_term(self) -> int:
        raise NotImplementedError
