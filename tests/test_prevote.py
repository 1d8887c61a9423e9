"""The pre-vote rules (raft/prevote.py) on a stand-in for pysyncobj's state: when a node
grants a pre-vote, when a round lets an election start, and that pysyncobj's own election
deadline is kept in the future otherwise. The cluster behaviour is in
tests/chaos/test_prevote.py."""

from __future__ import annotations

import time
from typing import Any

from symphonyd.raft.prevote import CANDIDATE, FOLLOWER, LEADER, NEVER, PreVote


class Node(PreVote):
    def __init__(self, peers: int, term: int = 5, log: tuple[int, int] = (5, 100)) -> None:
        self._SyncObj__raftState = FOLLOWER
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__raftElectionDeadline = 0.0
        self._SyncObj__otherNodes = {f"peer{i}" for i in range(peers)}
        self.log_term, self.log_index = log
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self._prevote_setup(0.4, 1.4)

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        self.sent.append((node, message))

    def _last_log_index(self) -> int:
        return self.log_index

    def _last_log_term(self) -> int:
        return self.log_term

    def fire_timer(self) -> None:
        self._election_at = 0.0
        self._prevote_tick()


def ask(term: int = 6, index: int = 100, log_term: int = 5) -> dict[str, Any]:
    return {"type": "pre_vote", "term": term, "last_log_index": index, "last_log_term": log_term}


def answer(node: Node, message: dict[str, Any]) -> bool:
    assert node._prevote_message("candidate", message) is True  # never passed to pysyncobj
    ((to, reply),) = node.sent[-1:]
    assert to == "candidate" and reply["type"] == "pre_vote_response"
    return bool(reply["granted"])


def test_a_pre_vote_is_granted_only_without_a_live_leader_and_to_a_current_log() -> None:
    node = Node(peers=2)
    assert not answer(node, ask())  # it just started: it heard from "a leader" now
    node._leader_seen = time.monotonic() - 1.0
    assert answer(node, ask())
    assert not answer(node, ask(term=5))  # not a later term than its own
    assert not answer(node, ask(log_term=4, index=500))  # an older last term
    assert not answer(node, ask(index=99))  # same term, shorter log
    assert not answer(node, {"type": "pre_vote", "term": "6"})  # malformed
    node._prevote_message("leader", {"type": "append_entries", "term": 5})
    assert not answer(node, ask())  # the leader spoke just now
    node._leader_seen = time.monotonic() - 1.0
    node._SyncObj__raftState = LEADER
    assert not answer(node, ask())
    assert node.prevotes_denied == 7


def test_a_round_needs_a_majority_before_pysyncobj_may_elect() -> None:
    node = Node(peers=2)
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == NEVER  # pysyncobj never elects by itself
    node.fire_timer()
    asked = [m for _, m in node.sent if m["type"] == "pre_vote"]
    assert len(asked) == 2 and asked[0]["term"] == 6 and node.prevote_rounds == 1
    assert node._SyncObj__raftElectionDeadline == NEVER
    node._prevote_message("peer0", {"type": "pre_vote_response", "term": 5, "granted": True})
    node._prevote_message("peer1", {"type": "pre_vote_response", "term": 6, "granted": False})
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == NEVER  # a stale grant and a refusal
    node._prevote_message("peer0", {"type": "pre_vote_response", "term": 6, "granted": True})
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == 0.0  # 2 of 3: pysyncobj elects now
    node._SyncObj__raftState, node._SyncObj__raftCurrentTerm = CANDIDATE, 6
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == NEVER  # a failed election: timer again


def test_a_granted_election_not_started_in_time_is_dropped() -> None:
    node = Node(peers=0)  # alone: its own grant is a majority
    node.fire_timer()
    assert node._SyncObj__raftElectionDeadline == 0.0
    node._allowed_until = time.monotonic() - 0.1  # connected to no one meanwhile
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == NEVER


def test_a_leadership_transfer_skips_the_pre_vote_and_a_leader_heard_cancels_one() -> None:
    node = Node(peers=2)
    assert node._prevote_message("leader", {"type": "timeout_now", "term": 5}) is False
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == 0.0
    node._prevote_message("leader", {"type": "append_entries", "term": 5})
    node._prevote_tick()
    assert node._SyncObj__raftElectionDeadline == NEVER


def test_pre_vote_off_leaves_elections_to_pysyncobj() -> None:
    node = Node(peers=2)
    node._prevote_setup(0.4, 1.4, enabled=False)
    node._SyncObj__raftElectionDeadline = 3.0
    node.fire_timer()
    assert node._SyncObj__raftElectionDeadline == 3.0 and not node.sent
