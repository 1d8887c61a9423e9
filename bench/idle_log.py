"""How fast an idle cluster's Raft log grows: the entries committed per minute by a cluster
doing nothing, once settled.

    python bench/idle_log.py [--nodes 3] [--settle 20] [--seconds 60] [--no-services]

Starts `--nodes` real daemons on 127.0.0.1 (tests/nodes.py), enables a block service (file
driver) on each unless `--no-services`, waits `--settle` seconds for start-up writes to
land, then reads the leader's commit index at the start and the end of `--seconds` and
prints the entries per minute, how far the store's revision moved and which changes moved
it (`table.op` counts, read back from `/v1/events`). Target (issue 12): 0 entries a
minute. Every daemon is stopped by its pid at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodes import NodeProcess, NodeSet


def commit_index(node: NodeProcess) -> int:
    return int(node.status()["commit_index"])


def changes_since(node: NodeProcess, revision: int) -> dict[str, int]:
    """The kinds of the changes after `revision` (`table.op`: count)."""
    counts: dict[str, int] = {}
    for kind, _change in node.recorded_events(revision):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-services", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idle-log-") as base:
        nodeset = NodeSet(Path(base))
        try:
            members = nodeset.form(args.nodes)
            if not args.no_services:
                for node in members:
                    result = node.cli("service", "new", "--json", timeout=60)
                    if result.returncode != 0:
                        print(result.stderr, file=sys.stderr)
                        return 1
            time.sleep(args.settle)
            leader = nodeset.leader()
            start_index = commit_index(leader)
            start_revision = int(leader.status().get("revision", 0))
            time.sleep(args.seconds)
            end_index = commit_index(leader)
            grown = end_index - start_index
            per_minute = grown * 60.0 / args.seconds
            report = {
                "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
                "nodes": args.nodes,
                "block_services": not args.no_services,
                "measured_s": args.seconds,
                "commit_index": [start_index, end_index],
                "entries_per_minute": round(per_minute, 1),
                "revision": [start_revision, int(leader.status().get("revision", 0))],
                "changes": changes_since(leader, start_revision),
            }
            print(json.dumps(report, indent=2))
        finally:
            nodeset.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
