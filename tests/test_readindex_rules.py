"""The read-index rules (raft/readindex.py) on a stand-in for pysyncobj's state: when a
leader's read is confirmed, what makes it fail, how followers echo rounds and ask the
leader, and what "hears a majority" means. The cluster behaviour is in
tests/test_read_index.py and the nemesis suite (tests/chaos/)."""

from __future__ import annotations

import time
from typing import Any

from symphonyd.raft.readindex import LEADER, ReadIndex

FOLLOWER = 0


class Node(ReadIndex):
    def __init__(self, peers: int, *, state: int = LEADER, term: int = 3) -> None:
        self._SyncObj__raftState = state
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__raftCommitIndex = 10
        self._SyncObj__raftLastApplied = 10
        self._SyncObj__raftLeader = "self" if state == LEADER else None
        self._SyncObj__otherNodes = {f"peer{i}" for i in range(peers)}
        self.terms = {10: term}  # the term of each log entry
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.rounds_sent = 0
        self._readindex_setup(heard_window=1.1)

    def _wake(self) -> None:
        pass

    def _send_append_entries(self) -> None:
        self.rounds_sent += 1
        for peer in sorted(self._SyncObj__otherNodes):
            message = {"type": "append_entries", "term": self._SyncObj__raftCurrentTerm}
            self._tag_outgoing(peer, message)
            self.sent.append((peer, message))

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        self.sent.append((node, message))

    def _entry_term(self, index: int) -> int | None:
        return self.terms.get(index)

    def read(self) -> list[tuple[int | None, str | None]]:
        answers: list[tuple[int | None, str | None]] = []
        self.read_index(lambda index, error: answers.append((index, error)))
        self._readindex_tick()
        return answers

    def ack(self, peer: str, rs: int | None) -> None:
        message: dict[str, Any] = {"type": "next_node_idx", "success": True}
        if rs is not None:
            message["rs"] = rs
        assert self._readindex_message(peer, message) is False  # pysyncobj sees it too
        self._readindex_tick()


def test_a_leader_answers_once_a_majority_answered_a_round_sent_after_the_read() -> None:
    node = Node(peers=2)
    node._acked = {"peer0": 7, "peer1": 7}  # answers to earlier rounds prove nothing
    node._round = 7
    answers = node.read()
    assert answers == [] and node.rounds_sent == 1
    assert {m["rs"] for _, m in node.sent} == {8}  # the new round, on every append
    node.ack("peer0", 7)
    assert answers == []
    node.ack("peer1", 8)  # with itself: 2 of 3
    assert answers == [(10, None)]


def test_reads_that_arrive_together_share_one_round() -> None:
    node = Node(peers=2)
    answers: list[Any] = []
    for _ in range(5):
        node.read_index(lambda index, error: answers.append((index, error)))
    node._readindex_tick()
    assert node.rounds_sent == 1
    node.ack("peer1", 1)
    assert answers == [(10, None)] * 5


def test_a_confirmed_read_waits_until_the_read_index_is_applied() -> None:
    node = Node(peers=2)
    node._SyncObj__raftLastApplied = 8
    answers = node.read()
    node.ack("peer0", 1)
    assert answers == []  # confirmed, not applied yet
    node._SyncObj__raftLastApplied = 10
    node._readindex_tick()
    assert answers == [(10, None)]


def test_a_leader_that_steps_down_or_changes_term_fails_its_reads() -> None:
    node = Node(peers=2)
    answers = node.read()
    node._SyncObj__raftState = FOLLOWER
    node.ack("peer0", 1)
    assert answers == [(None, "not_leader")]
    node = Node(peers=2)
    answers = node.read()
    node._SyncObj__raftCurrentTerm = 4  # re-elected in a later term: the read is of the old
    node.ack("peer0", 1)
    assert answers == [(None, "not_leader")]


def test_a_new_leader_answers_only_after_committing_in_its_own_term() -> None:
    node = Node(peers=2, term=3)
    node.terms = {10: 2}  # the entry at the commit index is of an earlier term
    assert node.read() == [(None, "not_ready")]
    assert node.rounds_sent == 0


def test_a_lone_leader_answers_at_once_and_an_unconfirmed_read_expires() -> None:
    assert Node(peers=0).read() == [(10, None)]
    node = Node(peers=2)
    answers = node.read()
    for read in node._confirming:
        read.expires = time.monotonic() - 1
    node._readindex_tick()
    assert answers == [(None, "unconfirmed")]


def test_read_index_off_answers_unsupported_and_sends_no_round() -> None:
    node = Node(peers=2)
    node.readindex_enabled = False
    assert node.read() == [(None, "unsupported")]
    message: dict[str, Any] = {"type": "append_entries", "term": 3}
    node._tag_outgoing("peer0", message)
    assert "rs" not in message  # as a leader of an older version


def test_a_follower_echoes_the_round_of_its_leader_and_asks_it_for_reads() -> None:
    node = Node(peers=2, state=FOLLOWER)
    node._SyncObj__raftLeader = "peer0"
    assert node.read() == [(None, "unsupported")]  # the leader has not tagged anything
    node._readindex_message("peer0", {"type": "append_entries", "term": 3, "rs": 12})
    ack: dict[str, Any] = {"type": "next_node_idx"}
    node._tag_outgoing("peer0", ack)
    assert ack["rs"] == 12
    other: dict[str, Any] = {"type": "next_node_idx"}
    node._tag_outgoing("peer1", other)
    assert "rs" not in other  # only what that leader sent
    node.sent.clear()
    answers = node.read()
    ((to, request),) = node.sent
    assert to == "peer0" and request["type"] == "read_index"
    node._SyncObj__raftLastApplied = 9
    reply = {"type": "read_index_response", "id": request["id"], "index": 10, "error": None}
    assert node._readindex_message("peer0", reply) is True
    assert answers == []  # waits for its own apply
    node._SyncObj__raftLastApplied = 10
    node._readindex_tick()
    assert answers == [(10, None)]


def test_a_follower_fails_its_requests_when_the_leader_changes() -> None:
    node = Node(peers=2, state=FOLLOWER)
    node._SyncObj__raftLeader = "peer0"
    node._readindex_message("peer0", {"type": "append_entries", "term": 3, "rs": 1})
    answers = node.read()
    node._SyncObj__raftLeader = "peer1"
    node._readindex_tick()
    assert answers == [(None, "not_leader")]


def test_a_leader_answers_a_followers_request_when_confirmed_without_waiting_to_apply() -> None:
    node = Node(peers=2)
    node._SyncObj__raftLastApplied = 5  # the follower applies, not the leader
    assert node._readindex_message("peer0", {"type": "read_index", "id": 4}) is True
    node._readindex_tick()
    node.ack("peer1", 1)
    replies = [m for _, m in node.sent if m["type"] == "read_index_response"]
    assert replies == [{"type": "read_index_response", "id": 4, "index": 10, "error": None}]


def test_hearing_a_majority_or_the_leader() -> None:
    node = Node(peers=4, state=FOLLOWER)
    now = time.monotonic()
    node._heard_since = now - 10
    assert not node.hears_majority(now)
    node.heard = {"peer0": now, "peer1": now - 0.5}
    assert node.hears_majority(now)  # itself and two of four within 1.1 s
    node.heard["peer1"] = now - 2
    assert not node.hears_majority(now)
    node._SyncObj__raftLeader = "peer0"
    assert node.hears_majority(now)  # a follower of a live leader hears only the leader
    node.heard["peer0"] = now - 2
    assert not node.hears_majority(now)
