"""The nemesis suite, longer: a 3- or 5-node cluster behind loopback proxies under a KV
workload (consistent reads, writes, deletes, CAS on a few keys) while faults follow each
other at random: kill -9 of the leader, a follower, a majority or every node (restarted),
SIGSTOP of the leader or a follower, partitions of the leader or a follower that drop or
reset its traffic, and on 5 nodes majority/minority splits (the leader and one follower
against three). Then it heals
everything and prints: operations attempted, acknowledged, failed, unknown; faults by
kind; the linearizability verdict per key; acknowledged writes lost; whether the members
are identical; the time to the next acknowledged write after each fault that hits the
leader.

Usage (repository root, symphonyd installed): python bench/chaos.py [--minutes 2] [--nodes 3]

Only 127.0.0.0/8 is used. Every process it starts is stopped by its PID (the cluster's
cleanup), also on failure. Bounded: --minutes 1..30 of faults, each request at most 5 s.
Exit status 1 when a check failed (the problems are printed, the logs kept).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.run import run_chaos

FAULTS = [
    ("kill", "leader"),
    ("kill", "follower"),
    ("pause", "leader"),
    ("pause", "follower"),
    ("partition-drop", "leader"),
    ("partition-cut", "leader"),
    ("partition-drop", "follower"),
    ("partition-cut", "follower"),
    ("kill", "majority"),
    ("kill", "all"),
]
SPLITS = [("partition-drop", "minority"), ("partition-cut", "minority")]  # 5 nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if not 1 <= args.minutes <= 30:
        parser.error("--minutes must be between 1 and 30")
    if not 1 <= args.clients <= 16 or not 1 <= args.keys <= 20:
        parser.error("--clients must be 1..16 and --keys 1..20")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    plan = FAULTS + (SPLITS if args.nodes == 5 else [])
    random.Random(seed).shuffle(plan)
    base = Path(tempfile.mkdtemp(prefix="chaos-"))
    print(f"seed {seed}, data in {base}", flush=True)
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {line}", flush=True)

    report = run_chaos(
        base,
        nodes=args.nodes,
        duration=args.minutes * 60,
        plan=plan,
        seed=seed,
        clients=args.clients,
        keys=args.keys,
        log=log,
    )
    print(report.summary())
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(f"logs kept in {base}")
        sys.exit(1)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
