"""What big writes cost a node: RSS and data-dir size after N PUTs of one 512 KiB value to
one key (the store itself holds one value), and the time a restart takes to serve a
consistent read. Before the store was bounded by bytes, 1,500 such writes took the daemon
from 59 MB to 1.94 GB of RSS.

Usage (repository root, symphonyd installed):
    python bench/store_bytes.py [--writes 1500] [--nodes 1|3]
        [--settings 'store = { log_max_bytes = "256M" }']

With --nodes 3 the writes go to the leader and every node's RSS (peak, after) and data
dir (largest seen, after) are reported; the restart is of the first node.

Every process it starts is stopped by its PID (NodeSet.cleanup), also on failure.
Bounded: at most --writes writes (1..20000), each at most 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodes import NodeProcess, NodeSet, wait_until

VALUE = 512 << 10


def rss_mib(node: NodeProcess) -> float:
    assert node.proc is not None
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total / (1 << 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=1500)
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--settings", default="", help="TOML text of the node's settings")
    args = parser.parse_args()
    if not 1 <= args.writes <= 20_000:
        parser.error("--writes must be 1..20000")
    with tempfile.TemporaryDirectory(prefix="store-bytes-") as base:
        nodeset = NodeSet(Path(base), settings=args.settings)
        try:
            members = nodeset.form(args.nodes)
            leader = nodeset.leader(among=members)
            client = leader.client(timeout=30)
            before = {n.name: rss_mib(n) for n in members}
            peak = dict(before)
            largest_dir = {n.name: 0.0 for n in members}
            started = time.monotonic()
            for n in range(args.writes):
                client.request("PUT", "/v1/kv/big", raw=bytes([n % 256]) * VALUE)
                if n % 100 == 0:
                    for node in members:
                        peak[node.name] = max(peak[node.name], rss_mib(node))
                if n % 500 == 0:
                    for node in members:
                        largest_dir[node.name] = max(largest_dir[node.name], dir_mib(node.data_dir))
            elapsed = time.monotonic() - started
            if args.nodes > 1:
                revision = leader.settled_revision()
                for node in members:
                    wait_until(lambda n=node: n.settled_revision() == revision, 120, "caught up")
            after = {n.name: rss_mib(n) for n in members}
            data_dir = {n.name: dir_mib(n.data_dir) for n in members}
            node = members[0]
            node.stop()
            restart = time.monotonic()
            node.start()
            wait_until(lambda: node.status()["has_quorum"], 120, "the node back")
            node.client(timeout=120).request(
                "GET", "/v1/kv/big", query={"raw": "1", "consistent": "1"}
            )
            per_node = {
                n.name: {
                    "rss_mib": {
                        "before": round(before[n.name]),
                        "peak": round(peak[n.name]),
                        "after": round(after[n.name]),
                    },
                    "data_dir_mib": {
                        "largest": round(max(largest_dir[n.name], data_dir[n.name]), 1),
                        "after": round(data_dir[n.name], 1),
                    },
                }
                for n in members
            }
            report = {
                "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
                "writes": args.writes,
                "nodes": args.nodes,
                "value_bytes": VALUE,
                "settings": args.settings,
                "writes_per_s": round(args.writes / elapsed, 1),
                "per_node": per_node,
                "restart_to_read_s": round(time.monotonic() - restart, 2),
                "rss_after_restart_mib": round(rss_mib(node)),
            }
            print(json.dumps(report, indent=2))
        finally:
            nodeset.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
