"""How soon an isolated leader answers: a 3-node cluster whose two followers are paused
(SIGSTOP: their connections stay open and silent, as in a partition that drops packets),
then one write to the leader that is cut off in flight (expected: 503 `indeterminate`)
and one sent after it (expected: 503 `no_quorum`, refused). Each round resumes the
followers (SIGCONT) and waits for a leader again.

Usage (repository root, symphonyd installed): python bench/isolated_leader.py [--rounds 5]

Every process it starts is stopped by its PID (NodeSet.cleanup), also on failure, and a
paused follower is always resumed first. Bounded: at most --rounds rounds (1..20), each
request at most 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symphonyd.errors import SymphonyError
from tests.nodes import NodeProcess, NodeSet


def timed_put(node: NodeProcess, key: str) -> tuple[float, str]:
    started = time.monotonic()
    try:
        node.client(timeout=30).request("PUT", f"/v1/kv/{key}", raw=b"1")
        code = "ok"
    except SymphonyError as exc:
        code = exc.code
    return time.monotonic() - started, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    base = Path(tempfile.mkdtemp(prefix="isolated-leader-"))
    nodes = NodeSet(base)
    in_flight: list[tuple[float, str]] = []
    after: list[tuple[float, str]] = []
    try:
        members = nodes.form(3)
        for index in range(args.rounds):
            leader = nodes.leader()
            paused = [n for n in members if n is not leader]
            try:
                for node in paused:
                    assert node.proc is not None
                    os.kill(node.proc.pid, signal.SIGSTOP)
                in_flight.append(timed_put(leader, f"bench/in-flight/{index}"))
                after.append(timed_put(leader, f"bench/after/{index}"))
            finally:
                for node in paused:
                    if node.proc is not None:
                        os.kill(node.proc.pid, signal.SIGCONT)
            nodes.leader()
            print(f"round {index}: in flight {in_flight[-1]}, after {after[-1]}", flush=True)
    finally:
        nodes.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    for what, runs in (("write cut off in flight", in_flight), ("write sent after", after)):
        seconds = [s for s, _ in runs]
        codes = sorted({c for _, c in runs})
        print(
            f"{what}: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s, "
            f"answered {', '.join(codes)} ({len(runs)} rounds)"
        )


if __name__ == "__main__":
    main()
