"""The write path's hand-offs: what a write costs in wake-ups and messages, counted.

* raft/cluster.py hands one round of applied entries (the proposals' outcomes and the
  tables changed) to asyncio in one `call_soon_threadsafe`, outcomes first, and hands
  nothing over for a change nobody waits for (a follower applying KV writes);
* raft/node.py lets a leader's new commit index ride the append message of the proposals
  queued in the same tick, instead of sending a message of its own first.

The Cluster is driven with a stand-in node (its Raft thread is this test); the second
part runs a real two-node cluster in this process (tests/test_raft_overrides.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import FAIL_REASON

from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.raft.fsm import FSM
from symphonyd.raft.node import RaftNode
from symphonyd.state.store import Store
from tests.nodes import wait_until
from tests.test_raft_overrides import cluster, leader_and_follower, on_raft_thread

__all__ = ["cluster"]  # the two-node fixture, shared with tests/test_raft_overrides.py


class StandInNode:
    """What Cluster needs of a RaftNode; `submit` only keeps the callback."""

    def __init__(self, raft_dir: Path) -> None:
        self.raft_dir = str(raft_dir)
        self.applied_listeners: list[Any] = []
        self.applying = False
        self.callbacks: list[Any] = []

    def submit(self, data: bytes, callback: Any) -> None:
        self.callbacks.append(callback)

    def status(self) -> dict[str, Any]:
        return {"self": "n1", "leader": "n1", "has_quorum": True, "peers": {}}


def kv_put(key: str) -> bytes:
    return Entry(EntryType.KV_PUT, {"key": key, "value": b"v", "flags": 0, "cas": None}).encode()


@pytest.fixture
async def bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Cluster, StandInNode, FSM, list[str]]:
    """A Cluster on a stand-in node and a real store, counting the loop's wake-ups from
    other threads."""
    loop = asyncio.get_running_loop()
    node = StandInNode(tmp_path)
    store = Store()
    wakeups: list[str] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wakeups.append(getattr(callback, "__name__", "?"))
        return call_soon_threadsafe(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    cluster = Cluster(node, store, loop)  # type: ignore[arg-type]
    return cluster, node, FSM(store), wakeups


def apply_round(node: StandInNode, fsm: FSM, keys: list[str], callbacks: list[Any]) -> None:
    """What the Raft thread does with one round of committed entries."""
    node.applying = True
    try:
        for key, callback in zip(keys, callbacks, strict=True):
            callback(fsm.apply(kv_put(key)), FAIL_REASON.SUCCESS)
    finally:
        node.applying = False
    for listener in node.applied_listeners:
        listener()


async def test_a_round_of_applied_entries_wakes_the_loop_once(
    bridge: tuple[Cluster, StandInNode, FSM, list[str]],
) -> None:
    cluster, node, fsm, wakeups = bridge
    order: list[str] = []

    async def write(key: str) -> None:
        await cluster.propose(Entry(EntryType.KV_PUT, {"key": key, "value": b"v"}))
        order.append(key)

    async def watch() -> None:
        assert await cluster.wait_for_revision(cluster.store.revision, 5)
        order.append("watcher")

    tasks = [asyncio.create_task(coro) for coro in (watch(), write("a"), write("b"))]
    await wait_for_callbacks(node, 2)
    raft_thread = threading.Thread(target=apply_round, args=(node, fsm, ["a", "b"], node.callbacks))
    raft_thread.start()
    raft_thread.join()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)

    assert wakeups == ["_deliver"], "two outcomes and their changes: one wake-up"
    assert order == ["a", "b", "watcher"], "the writers answer before the watchers wake"


async def test_a_change_nobody_waits_for_does_not_wake_the_loop(
    bridge: tuple[Cluster, StandInNode, FSM, list[str]],
) -> None:
    cluster, node, fsm, wakeups = bridge
    apply_round(node, fsm, ["nobody/waits"], [lambda *_: None])
    assert wakeups == [], "a follower's KV write woke its event loop"

    # An agent waits for its own tables: a KV write is not handed over to it either ...
    agent = asyncio.create_task(cluster.wait_for_tables({"images"}, cluster.store.revision, 5))
    await asyncio.sleep(0)
    apply_round(node, fsm, ["still/nobody"], [lambda *_: None])
    assert wakeups == []
    assert not agent.done()
    # ... one of its tables is, and wakes it.
    with cluster.store.lock:
        cluster.store.put("images", "i1", {"id": "i1"})
        cluster.store.commit()
    assert await asyncio.wait_for(agent, 5)
    assert wakeups == ["_deliver"]


async def wait_for_callbacks(node: StandInNode, count: int) -> None:
    for _ in range(1000):
        if len(node.callbacks) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{len(node.callbacks)} of {count} proposals submitted")


# -- a real leader: the commit index rides the next append ---------------------------------


def test_a_commit_index_rides_the_append_of_the_queued_proposals(
    cluster: list[RaftNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write is proposed from the callback of the one before (as a client does that
    waits for its answer): each round's commit index goes out with the next write's entry;
    only the last commit has a message of its own."""
    leader, follower = leader_and_follower(cluster)
    rounds = 20
    appends: list[int] = []  # entries carried by each append message to the follower
    send = leader.transport.send

    def recording_send(node: Any, message: Any) -> bool:
        is_append = isinstance(message, dict) and message.get("type") == "append_entries"
        if is_append and node.id == follower.selfNode.id:
            appends.append(len(message.get("entries") or []))
        return send(node, message)

    done = threading.Event()
    written: list[int] = []

    def callback(result: Any, error: int) -> None:
        assert error == FAIL_REASON.SUCCESS and result["ok"]
        written.append(int(result["revision"]))
        if len(written) < rounds:
            leader.submit(kv_put(f"chain/{len(written)}"), callback)
        else:
            done.set()

    def start() -> None:
        monkeypatch.setattr(leader.transport, "send", recording_send)
        leader.submit(kv_put("chain/0"), callback)

    on_raft_thread(leader, start)
    assert done.wait(10), f"{len(written)} of {rounds} writes applied within 10 s"
    last = leader.raftCommitIndex
    wait_until(lambda: follower.raftLastApplied >= last, 10, "the follower to apply the writes")
    on_raft_thread(leader, lambda: monkeypatch.setattr(leader.transport, "send", send))

    carrying = [n for n in appends if n]
    assert sum(carrying) == rounds and len(carrying) == rounds, appends
    # The last commit's own message, and at most one heartbeat or read round beside it;
    # without the change each of the 20 rounds sent its commit index alone first.
    assert len(appends) - len(carrying) <= 2, appends


# -- the disk reserve: looked up once a second while far from it ---------------------------


@pytest.mark.parametrize(("free_mib", "looks"), [(4096, 1), (200, 10)])
async def test_free_space_is_looked_up_once_a_second_unless_near_the_reserve(
    bridge: tuple[Cluster, StandInNode, FSM, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    free_mib: int,
    looks: int,
) -> None:
    cluster, _node, _fsm, _wakeups = bridge
    counted: list[str] = []

    def statvfs(path: str) -> Any:
        counted.append(path)
        return types.SimpleNamespace(f_bavail=free_mib << 8, f_frsize=4096, f_blocks=1 << 22)

    monkeypatch.setattr(os, "statvfs", statvfs)
    for _ in range(10):
        cluster._check_disk(EntryType.KV_PUT, 1000)
    # 64 MiB reserve: 4 GiB free is far from it; 200 MiB is within the 256 MiB slack
    assert len(counted) == looks
