"""`symphonyd recover`: make a node the only member of its cluster, from its own data,
after the cluster lost its majority for good (Consul's peers.json, LXD's
`cluster recover-from-quorum-loss`).

Raft cannot commit anything without a majority, and a membership change is itself a
commit, so nothing done through the log can shrink a cluster whose majority is gone.
Recovery is done offline, on a stopped node, on its files:

1. the node's state is rebuilt from its snapshot and *every* entry of its journal,
   including those past its commit index (the node may have been the last to hold
   them; as the only member it would commit them anyway);
2. the other nodes' records are removed from that state, as `node remove` would (what
   was placed on them shows as orphaned, see departed.py);
3. a new snapshot with this node as the only Raft member replaces the old one, the
   journal is cut to the snapshot's last two entries (no membership entry is left to
   replay), and identity.json's peers become this node alone.

The raft directory as it was is kept beside it (`raft.before-recover-<time>`). Nothing
here talks to the network; the caller makes sure the daemon is stopped (`DataDirLock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import time
from typing import Any

from symphonyd.durable import fsync_dir, lock_data_dir, write_file_durably
from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.raft.fsm import FSM
from symphonyd.raft.journal import DurableJournal
from symphonyd.raft.snapshots import LogEntry, read_snapshot_file, write_snapshot_file
from symphonyd.state import kv, nodes
from symphonyd.state.store import Store

__all__ = ["Recovery", "plan_recovery", "stopped_daemon"]

# pysyncobj's command types: the first byte of every log command
REGULAR, NO_OP, MEMBERSHIP = 0, 1, 2


@dataclasses.dataclass
class Recovery:
    """What `recover` found in a data dir and will do to it."""

    data_dir: str
    name: str
    raft_addr: str
    cluster_id: str
    members: list[str]  # the Raft members the node's data names now
    removed_nodes: list[str]  # node records that go (every other node)
    last_index: int
    last_term: int
    commit_index: int  # as this node knew it: entries past it become committed
    keys: int
    fsm: FSM
    last: LogEntry
    prev: LogEntry

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "raft_addr": self.raft_addr,
            "cluster_id": self.cluster_id,
            "members_before": self.members,
            "removed_nodes": self.removed_nodes,
            "last_index": self.last_index,
            "commit_index_before": self.commit_index,
            "uncommitted_entries_kept": max(0, self.last_index - self.commit_index),
            "kv_keys": self.keys,
        }

    def apply(self) -> str:
        """Rewrite the data dir (see the module's docstring); returns the backup's path."""
        raft_dir = os.path.join(self.data_dir, "raft")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        backup = os.path.join(self.data_dir, f"raft.before-recover-{stamp}")
        shutil.copytree(raft_dir, backup)
        fsync_dir(self.data_dir)
        for name in self.removed_nodes:
            self.fsm.apply(Entry(EntryType.NODE_REMOVE, {"name": name}).encode())
        write_snapshot_file(
            os.path.join(raft_dir, "snapshot"),
            self.last,
            self.prev,
            [self.raft_addr],
            self.fsm.snapshot(),
        )
        journal = DurableJournal(raft_dir)
        try:
            journal.clear()
            journal.add(*self.prev)
            journal.add(*self.last)
            journal.setRaftCommitIndex(self.last[1])
            journal.setCurrentTerm(journal.getCurrentTerm(), None)  # no vote to keep
            journal.sync()
        finally:
            journal._destroy()
        identity_path = os.path.join(self.data_dir, "identity.json")
        with open(identity_path) as f:
            identity = json.load(f)
        identity["peers"] = [self.raft_addr]
        write_file_durably(identity_path, json.dumps(identity, indent=2).encode())
        return backup


def plan_recovery(data_dir: str) -> Recovery:
    """Read a stopped node's data dir and work out its recovery (nothing is written)."""
    identity_path = os.path.join(data_dir, "identity.json")
    try:
        with open(identity_path) as f:
            identity = json.load(f)
    except FileNotFoundError:
        raise NotFound(
            f"{data_dir} holds no cluster member (no identity.json): nothing to recover"
        ) from None
    except ValueError as exc:
        raise Invalid(f"{identity_path} is damaged: {exc}") from exc
    raft_dir = os.path.join(data_dir, "raft")
    if not os.path.isdir(raft_dir):
        raise NotFound(f"{raft_dir} is missing: this node holds no Raft data to recover from")
    store = Store()
    fsm = FSM(store)
    snapshot_path = os.path.join(raft_dir, "snapshot")
    members = list(identity.get("peers", []))
    base = 0
    prev: LogEntry | None = None
    last: LogEntry | None = None
    if os.path.exists(snapshot_path):
        try:
            snapshot = read_snapshot_file(snapshot_path)
            fsm.restore(snapshot.state)
        except Exception as exc:
            raise Invalid(f"the snapshot {snapshot_path} cannot be read: {exc}") from exc
        members, base = list(snapshot.members), snapshot.last[1]
        prev, last = snapshot.prev, snapshot.last
    journal = DurableJournal(raft_dir)
    try:
        entries = [journal[i] for i in range(len(journal))]
        commit_index = journal.getRaftCommitIndex()
    finally:
        journal._destroy()
    for entry in entries:
        command, index, _term = entry
        if index <= base:
            continue
        prev, last = last, entry
        kind = command[0] if command else NO_OP
        if kind == REGULAR:
            _method, args = pickle.loads(command[1:])[:2]  # our own journal: trusted
            fsm.apply(args[0])
        elif kind == MEMBERSHIP:
            change, address = pickle.loads(command[1:])[:2]
            if change == "add" and address not in members:
                members.append(address)
            elif change == "rem" and address in members:
                members.remove(address)
    if last is None or prev is None:
        raise Conflict("this node's journal holds fewer than two entries: nothing to recover")
    name, raft_addr = str(identity["name"]), str(identity["raft_addr"])
    with store.lock:
        others = sorted(n["name"] for n in nodes.all_nodes(store) if n["name"] != name)
        keys = len(store.table(kv.TABLE))
    return Recovery(
        data_dir=data_dir,
        name=name,
        raft_addr=raft_addr,
        cluster_id=str(identity.get("cluster_id", "")),
        members=sorted(set(members) | {raft_addr}),
        removed_nodes=others,
        last_index=last[1],
        last_term=last[2],
        commit_index=commit_index,
        keys=keys,
        fsm=fsm,
        last=last,
        prev=prev,
    )


@contextlib.contextmanager
def stopped_daemon(data_dir: str) -> Any:
    """Hold the data dir's lock (the one `symphonyd run` holds) while recovering."""
    if not os.path.isdir(data_dir):
        raise NotFound(f"no data dir at {data_dir}")
    fd = lock_data_dir(data_dir)
    if fd is None:
        raise Conflict(
            f"symphonyd is running with data dir {data_dir}: stop it first "
            "(systemctl stop symphonyd)"
        )
    try:
        yield
    finally:
        os.close(fd)
