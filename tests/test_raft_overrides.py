"""The overrides of pysyncobj in symphonyd/raft/node.py are in effect, and refused when the
installed pysyncobj is not the release they were written against.

Each override is checked on a real two-node cluster of `RaftNode` objects in this process
(127.0.0.1, ports picked free by the kernel), by watching what pysyncobj does with it:
the journal's writes and syncs, the transport's sends, the Raft thread's wake-ups. The
cluster is stopped at the end of the module, also on failure.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pysyncobj.encryptor
import pysyncobj.journal
import pysyncobj.pickle
import pysyncobj.syncobj as syncobj
import pytest
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from symphonyd.raft.entries import Entry, EntryType
from symphonyd.raft.fsm import FSM
from symphonyd.raft.journal import DurableJournal
from symphonyd.raft.node import RaftNode
from symphonyd.raft.pinning import (
    PYSYNCOBJ_VERSION,
    RELIED_ON,
    check_pysyncobj,
    missing_internals,
)
from symphonyd.raft.wire import AeadEncryptor
from symphonyd.security import new_secret
from symphonyd.state.store import Store
from tests.nodes import free_port, wait_until

T = TypeVar("T")


# -- a two-node cluster in this process ------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RaftNode]]:
    base = tmp_path_factory.mktemp("raft")
    ports: set[int] = set()
    while len(ports) < 2:  # the OS may hand out a port twice
        ports.add(free_port())
    addrs = [f"127.0.0.1:{port}" for port in sorted(ports)]
    secret = new_secret()
    nodes: list[RaftNode] = []
    try:
        for i, addr in enumerate(addrs):
            node = RaftNode(
                self_addr=addr,
                peers=[a for a in addrs if a != addr],
                raft_dir=str(base / f"r{i + 1}"),
                secret=secret,
                fsm=FSM(Store()),
                # Long enough that a busy machine does not hold an election mid-test.
                tuning={"raftMinTimeout": 1.0, "raftMaxTimeout": 2.0},
            )
            nodes.append(node)
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def leader_and_follower(nodes: list[RaftNode]) -> tuple[RaftNode, RaftNode]:
    """The leader and its follower, once they are connected and agree who leads."""

    def find() -> tuple[RaftNode, RaftNode] | None:
        for leader in nodes:
            status = leader.status()
            (follower,) = (node for node in nodes if node is not leader)
            if (
                status["role"] == "leader"
                and status["has_quorum"]
                and all(p["connected"] for p in status["peers"].values())
                and follower.status()["leader"] == status["self"]
            ):
                return leader, follower
        return None

    return wait_until(find, 15, "a leader connected to its follower")


def on_raft_thread(node: RaftNode, fn: Callable[[], T]) -> T:
    """Run `fn` on the node's Raft thread (pysyncobj's state is not thread-safe)."""
    done = threading.Event()
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    node.call_soon(call)
    assert done.wait(5), "the Raft thread did not run the call within 5 s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def peer(node: RaftNode, other: RaftNode) -> Any:
    """`node`'s pysyncobj Node object for `other`."""
    return next(n for n in node.otherNodes if n.id == other.selfNode.id)


def propose_together(leader: RaftNode, count: int, follower: RaftNode) -> range:
    """Queue `count` writes at once from the leader's Raft thread, so that its next tick
    appends them all; wait until the follower has applied every one. Returns their indices."""
    applied: list[Any] = []
    all_applied = threading.Event()

    def callback(result: Any, error: int) -> None:
        applied.append((result, error))
        if len(applied) == count:
            all_applied.set()

    def queue_all() -> int:
        first = int(leader.journal[-1][1]) + 1
        for i in range(count):
            body = {"key": f"overrides/{first + i}", "value": b"v", "flags": 0, "cas": None}
            leader.submit(Entry(EntryType.KV_PUT, body).encode(), callback)
        return first

    first = on_raft_thread(leader, queue_all)
    assert all_applied.wait(10), f"{len(applied)} of {count} writes applied within 10 s"
    assert all(error == 0 and result["ok"] for result, error in applied), applied
    indices = range(first, first + count)
    wait_until(
        lambda: follower.raftLastApplied >= indices[-1], 10, "the follower to apply the writes"
    )
    return indices


# -- the journal and the encryptor are ours ----------------------------------------------------


def test_pysyncobj_uses_our_journal_and_encryptor(cluster: list[RaftNode]) -> None:
    for node in cluster:
        assert node._SyncObj__raftLog is node.journal
        assert isinstance(node.encryptor, AeadEncryptor)
    # ... and the factories were only swapped while each node was built.
    assert syncobj.createJournal is pysyncobj.journal.createJournal
    assert syncobj.getEncryptor is pysyncobj.encryptor.getEncryptor


# -- no needless truncation --------------------------------------------------------------------


def test_a_follower_keeps_entries_it_already_holds(
    cluster: list[RaftNode], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader re-sends entries the follower holds and has applied (as pysyncobj's leader
    does after lowering nextIndex): the follower neither deletes nor re-adds them."""
    leader, follower = leader_and_follower(cluster)
    held = propose_together(leader, 10, follower)
    journal = follower.journal
    writes: list[str] = []
    add, delete_from = journal.add, journal.deleteEntriesFrom

    def counting_add(command: bytes, idx: int, term: int) -> None:
        writes.append("add")
        add(command, idx, term)

    def counting_delete_from(entry_from: int) -> None:
        writes.append("delete")
        delete_from(entry_from)

    monkeypatch.setattr(journal, "add", counting_add)
    monkeypatch.setattr(journal, "deleteEntriesFrom", counting_delete_from)
    trimmed_before = follower.trimmed_entries

    def resend_held_entries() -> None:
        leader._SyncObj__raftNextIndex[peer(leader, follower)] = held[0]
        leader._SyncObj__sendAppendEntries()

    on_raft_thread(leader, resend_held_entries)
    # One more write on the same connection: once it is applied, the re-send was handled.
    propose_together(leader, 1, follower)

    assert writes == ["add"], "the follower rewrote entries it already held"
    assert follower.trimmed_entries - trimmed_before == len(held)
    assert not [r for r in caplog.records if "truncating" in r.getMessage()]


def test_a_stale_acknowledgement_does_not_lower_next_index(cluster: list[RaftNode]) -> None:
    """A success acknowledging less than the leader has already sent leaves nextIndex alone
    (pysyncobj would lower it and re-send what the follower holds)."""
    leader, follower = leader_and_follower(cluster)
    propose_together(leader, 10, follower)

    def acknowledge_stale() -> tuple[int, int]:
        node = peer(leader, follower)
        next_index = leader._SyncObj__raftNextIndex
        before = next_index[node]
        # As if entries before-5 .. before-1 were in flight, and only some acknowledged yet.
        leader._SyncObj__raftMatchIndex[node] = before - 5
        stale = {"type": "next_node_idx", "next_node_idx": before - 3, "reset": False}
        leader._SyncObj__onMessageReceived(node, {**stale, "success": True})
        return before, next_index[node]

    before, after = on_raft_thread(leader, acknowledge_stale)
    assert after == before


# -- durability: acknowledgements wait for the fsync ---------------------------------------------


def test_acknowledgements_leave_only_after_the_fsync(
    cluster: list[RaftNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = leader_and_follower(cluster)
    journal = follower.journal
    events: list[tuple[str, int]] = []  # ("fsync", last index synced) | ("ack", index acked)
    sync = journal.sync

    def recording_sync() -> None:
        dirty = journal.dirty
        sync()
        if dirty:
            events.append(("fsync", int(journal[-1][1])))

    send = TCPTransport.send

    def recording_send(transport: TCPTransport, node: Any, message: Any) -> Any:
        if (
            transport is follower.transport
            and isinstance(message, dict)
            and message.get("type") == "next_node_idx"
            and message.get("success")
        ):
            events.append(("ack", message["next_node_idx"] - 1))
        return send(transport, node, message)

    monkeypatch.setattr(journal, "sync", recording_sync)
    monkeypatch.setattr(TCPTransport, "send", recording_send)
    written = propose_together(leader, 20, follower)

    acks = [(position, index) for position, (kind, index) in enumerate(events) if kind == "ack"]
    assert any(index >= written[-1] for _, index in acks), f"no ack of the writes: {events}"
    for position, index in acks:
        if index < written[0]:
            continue  # a heartbeat's ack of entries synced before the test
        synced = max((i for kind, i in events[:position] if kind == "fsync"), default=0)
        assert synced >= index, f"entry {index} acknowledged before its fsync: {events}"


# -- speed: one append message per tick, one wake-up per burst ------------------------------------


def test_commands_of_one_tick_go_out_in_one_append(
    cluster: list[RaftNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = leader_and_follower(cluster)
    sent: list[list[int]] = []  # the indices of each append message to the follower
    send = leader.transport.send

    def recording_send(node: Any, message: Any) -> bool:
        if (
            node.id == follower.selfNode.id
            and isinstance(message, dict)
            and message.get("type") == "append_entries"
            and message.get("entries")
        ):
            sent.append([idx for _command, idx, _term in message["entries"]])
        return send(node, message)

    ticks: list[int] = []  # how many ticks appended commands: one, unless the load split it
    check = leader._checkCommandsToApply

    def counting_check() -> None:
        before = len(leader.journal)
        check()
        if len(leader.journal) > before:
            ticks.append(len(leader.journal) - before)

    monkeypatch.setattr(leader.transport, "send", recording_send)
    monkeypatch.setattr(leader, "_checkCommandsToApply", counting_check)
    written = propose_together(leader, 50, follower)

    carrying = [indices for indices in sent if set(indices) & set(written)]
    assert len(carrying) == len(ticks), (
        f"{len(carrying)} append messages for {len(ticks)} ticks of commands"
    )
    assert set(written) <= {idx for indices in carrying for idx in indices}


def test_a_burst_of_proposals_wakes_the_raft_thread_once(
    cluster: list[RaftNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = leader_and_follower(cluster)
    notifier = leader._SyncObj__pipeNotifier
    wakeups: list[int] = []
    notify = notifier.notify

    def counting_notify() -> None:
        wakeups.append(1)
        notify()

    monkeypatch.setattr(notifier, "notify", counting_notify)
    propose_together(leader, 30, follower)
    # one to hand `queue_all` to the Raft thread (call_soon), one for the 30 proposals
    assert len(wakeups) == 2


# -- the import-time check of the installed pysyncobj --------------------------------------------


def renamed(name: str) -> types.ModuleType:
    """A copy of pysyncobj.syncobj as a release that renamed `name` would look: as a module
    global, a SyncObj attribute, and in the code of SyncObj.__init__."""

    def rename(names: Any) -> Any:
        return {f"{n}_renamed" if n == name else n: v for n, v in names.items()}

    module = types.ModuleType("pysyncobj.syncobj")
    module.__dict__.update(rename(vars(syncobj)))
    members = rename(
        {k: v for k, v in vars(syncobj.SyncObj).items() if k not in ("__dict__", "__weakref__")}
    )
    init = syncobj.SyncObj.__init__
    code = init.__code__.replace(
        co_names=tuple(f"{n}_renamed" if n == name else n for n in init.__code__.co_names)
    )
    members["__init__"] = types.FunctionType(code, init.__globals__, "__init__", init.__defaults__)
    module.SyncObj = type("SyncObj", (), members)  # type: ignore[attr-defined]
    return module


def test_the_installed_pysyncobj_passes_the_check() -> None:
    assert syncobj.VERSION == PYSYNCOBJ_VERSION
    assert missing_internals(syncobj) == []
    check_pysyncobj(syncobj)
    check_pysyncobj(renamed("no such name"))  # the copy itself is faithful


@pytest.mark.parametrize("name", [name for _kind, name in RELIED_ON])
def test_a_renamed_internal_is_refused(name: str) -> None:
    with pytest.raises(ImportError) as refused:
        check_pysyncobj(renamed(name))
    message = str(refused.value)
    assert f".{name}" in message
    assert f"pysyncobj {PYSYNCOBJ_VERSION}" in message
    assert f"pysyncobj=={PYSYNCOBJ_VERSION}" in message


def test_another_version_is_refused() -> None:
    module = renamed("no such name")
    module.VERSION = "0.3.18"  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match=r"pysyncobj 0\.3\.17.*version 0\.3\.18"):
        check_pysyncobj(module)
    del module.VERSION  # a release without a version: only the names are checked
    check_pysyncobj(module)


def test_the_check_runs_when_the_node_module_is_imported() -> None:
    program = (
        "import pysyncobj.syncobj as s\n"
        "del s.SyncObj._SyncObj__sendAppendEntries\n"
        "import symphonyd.raft.node\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "lacks SyncObj._SyncObj__sendAppendEntries" in done.stderr


def test_the_raft_port_guard_is_installed_and_checks_its_internals() -> None:
    from pysyncobj.tcp_connection import TcpConnection

    from symphonyd.raft import guard

    assert guard.missing_internals() == []
    assert TcpConnection._symphonyd_guarded is True  # installed by importing raft.node
    program = (
        "from pysyncobj.tcp_connection import TcpConnection\n"
        "del TcpConnection._TcpConnection__processRead\n"
        "import symphonyd.raft.node\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "TcpConnection._TcpConnection__processRead" in done.stderr


def test_a_restarted_node_takes_its_member_list_from_its_journal(tmp_path: Path) -> None:
    """A node killed just after it appended a membership entry (a join), before it
    learnt the entry was committed: after its restart the entry is in effect, as Raft
    wants (the latest configuration in the log, committed or not). pysyncobj alone took
    it only once committed: this node, alone in its old configuration, elected itself
    leader of a cluster its own log says has two members."""
    addr, joined = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    journal = DurableJournal(str(tmp_path))
    journal.add(bytes([1]), 1, 1)  # pysyncobj's first entry: a no-op
    journal.add(bytes([2]) + pysyncobj.pickle.dumps(["add", joined, TCPNode(joined)]), 2, 1)
    journal.setCurrentTerm(1, addr)
    journal.setRaftCommitIndex(1)  # the add was appended, its commit never learnt
    journal._destroy()
    node = RaftNode(
        self_addr=addr, peers=[], raft_dir=str(tmp_path), secret=new_secret(), fsm=FSM(Store())
    )
    node.start()
    try:
        wait_until(lambda: [n.id for n in node.otherNodes] == [joined], 10, "the member taken")
        deadline = time.monotonic() + 3.0  # several election timeouts (0.4-1.0 s)
        while time.monotonic() < deadline:
            assert node.status()["role"] != "leader", "elected itself: one of two members"
            time.sleep(0.05)
    finally:
        node.stop()
