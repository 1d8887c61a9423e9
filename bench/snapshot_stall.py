"""How long a snapshot holds the Raft thread: a one-node RaftNode in this process whose
store holds N small keys and M values of 512 KiB, then a forced snapshot. Prints the
longest gap between two ticks of the Raft thread while the snapshot is made, the time
its capture took on that thread, and the time the writer took off it; and, for
comparison, what writing the same snapshot on the thread took before (encode, write,
fsync in one call).

Usage (repository root, symphonyd installed):
    python bench/snapshot_stall.py [--small 100000] [--big 150]

It starts no process; its data dir is a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symphonyd.raft.fsm import FSM
from symphonyd.raft.node import RaftNode
from symphonyd.raft.snapshots import write_snapshot_file
from symphonyd.security import new_secret
from symphonyd.state.store import Store
from tests.nodes import free_port, wait_until


def fill(store: Store, small: int, big: int) -> None:
    table = store.table("kv")
    for i in range(small):
        key = f"small/{i:07d}"
        table._put(key, {"key": key, "value": b"x" * 100, "flags": 0, "revision": i})
    for i in range(big):
        key = f"big/{i:04d}"
        table._put(key, {"key": key, "value": os.urandom(512 << 10), "flags": 0, "revision": i})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000, choices=range(0, 1_000_001))
    parser.add_argument("--big", type=int, default=150, choices=range(0, 2001))
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="snapshot-stall-")
    node = RaftNode(
        self_addr=f"127.0.0.1:{free_port()}",
        peers=[],
        raft_dir=os.path.join(base, "raft"),
        secret=new_secret(),
        fsm=FSM(Store()),
    )
    ticks: list[float] = []
    node.addOnTickCallback(lambda: ticks.append(time.perf_counter()))
    try:
        node.start()
        wait_until(lambda: node.status()["role"] == "leader", 10, "the node to lead")
        loaded = threading.Event()

        def load() -> None:
            with node.fsm.store.lock:
                fill(node.fsm.store, args.small, args.big)
            loaded.set()

        node.call_soon(load)
        assert loaded.wait(120), "the store was not filled within 120 s"
        size = len(node.fsm.snapshot())
        ticks.clear()
        node.forceLogCompaction()
        wait_until(lambda: node.snapshots.written == 1, 120, "the snapshot", interval=0.01)
        time.sleep(0.2)  # a few ticks after it
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        started = time.perf_counter()
        write_snapshot_file(
            os.path.join(base, "inline"), (b"", 2, 1), (b"", 1, 1), ["a"], node.fsm.snapshot()
        )
        inline = time.perf_counter() - started
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"store: {args.small} small keys, {args.big} values of 512 KiB ({size >> 20} MiB)")
    print(f"longest gap between Raft ticks while snapshotting: {max(gaps) * 1000:.1f} ms")
    print(f"capture on the Raft thread: {node.snapshots.capture_seconds * 1000:.1f} ms")
    print(f"encode, write and fsync on the writer's thread: {node.snapshots.last_seconds:.3f} s")
    print(f"the same snapshot written on the Raft thread, as before: {inline:.3f} s")


if __name__ == "__main__":
    main()
