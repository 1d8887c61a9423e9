"""A rolling upgrade with two versions of the entry schema: a node of the next version
(the next schema level, with an entry type the old ones do not know) joins a cluster of the previous
one and follows it; nodes are upgraded one by one; their records tell who runs what, and
`status` warns while versions differ."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from symphonyd.raft import entries
from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CURRENT = entries.SCHEMA_VERSION
NEXT = CURRENT + 1
# symphonyd "0.2.0": the next schema level, one entry type more (99) than the code here.
NEXT_VERSION = f"""
import sys
import symphonyd, symphonyd.daemon as daemon, symphonyd.membership as membership
import symphonyd.admission as admission
import symphonyd.node_status as node_status
from symphonyd.raft import entries, fsm
symphonyd.__version__ = daemon.__version__ = "0.2.0"
membership.__version__ = node_status.__version__ = "0.2.0"
entries.SCHEMA_VERSION = membership.SCHEMA_VERSION = admission.SCHEMA_VERSION = {NEXT}
entries.INTRODUCED[99] = {NEXT}
fsm.APPLIERS[99] = lambda store, body: {{"ok": True}}
sys.argv[0] = "symphonyd"
from symphonyd.cli.main import main
main()
"""


class NextVersionNode(NodeProcess):
    @property
    def program(self) -> list[str]:
        return [sys.executable, "-c", NEXT_VERSION]


def versions(node: NodeProcess) -> dict[str, tuple[str, int]]:
    return {m["name"]: (m["version"], m["schema"]) for m in node.status()["members"]}


def test_a_newer_node_joins_and_follows_then_the_rest_upgrade(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path)
    try:
        n1, n2 = nodes.form(2)
        n3 = NextVersionNode(tmp_path, "n3")
        nodes.nodes.append(n3)
        n3.start()
        nodes.join(n3, via=n1)
        assert n3.cli("--version").stdout.strip().endswith("0.2.0")
        wait_until(lambda: versions(n1).get("n3") == ("0.2.0", NEXT), 20, "n3's record")
        assert versions(n1)["n1"] == ("0.1.0", CURRENT)
        # The new node follows the old cluster: writes made on old nodes reach it.
        assert n1.client().request("PUT", "/v1/kv/upgrade/a", raw=b"old")
        got = n3.client().request("GET", "/v1/kv/upgrade/a", query={"raw": "1", "consistent": "1"})
        assert got == b"old"
        # While versions differ, status says so.
        status = n1.cli("status")
        assert status.returncode == 0 and "different symphonyd versions" in status.stderr
        # Upgrade the old nodes one at a time (same data dir, same identity).
        for old in (n2, n1):
            assert old.stop() == 0
            upgraded = NextVersionNode(tmp_path, old.name)
            upgraded.api_port, upgraded.raft_port = old.api_port, old.raft_port
            nodes.nodes[nodes.nodes.index(old)] = upgraded
            upgraded.start()
            wait_until(
                lambda n=upgraded: versions(n3).get(n.name) == ("0.2.0", NEXT),
                30,
                f"{old.name} to run 0.2.0",
            )
        final = nodes.nodes[0]
        wait_until(  # the last record update reaches every member, this one too
            lambda: set(versions(final).values()) == {("0.2.0", NEXT)}, 20, "n1's view"
        )
        assert final.client().request("GET", "/v1/kv/upgrade/a", query={"raw": "1"}) == b"old"
        assert "different symphonyd versions" not in final.cli("status").stderr
    finally:
        nodes.cleanup()
