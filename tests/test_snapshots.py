"""Log compaction: snapshots written with our serializer survive restarts and are sent to
nodes that join after the log was compacted."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from tests.nodes import NodeSet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

COMPACT_OFTEN = "[raft]\nlogCompactionMinEntries = 40\nlogCompactionMinTime = 1\n"


def test_compacted_log_restarts_and_ships_to_a_new_node(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path, settings=COMPACT_OFTEN)
    try:
        n1, n2 = nodes.form(2)
        for i in range(150):
            assert n1.client().request("PUT", f"/v1/kv/snap/{i:03d}", raw=str(i).encode())
        snapshot = Path(n1.data_dir) / "raft" / "snapshot"
        wait_until(snapshot.exists, 20, "a snapshot on n1")
        payload = msgpack.unpackb(snapshot.read_bytes(), raw=False)
        header, _ = msgpack.unpackb(payload["state"], raw=False)
        assert header["magic"] == "symphonyd-snapshot"  # our format, not a pickle
        wait_until(lambda: n1.status()["raft"]["log_length"] < 150, 20, "the log to shrink")

        # A node joining now gets the snapshot, not the (gone) beginning of the log.
        n3 = nodes.new("n3")
        nodes.join(n3, via=n1)
        wait_until(
            lambda: (
                n3.client().request("GET", "/v1/kv/snap/", query={"keys": "1"}).__len__() == 150
            ),
            30,
            "n3 to hold every key",
        )

        # Restarts come back from snapshot + log.
        for node in (n1, n2, n3):
            node.kill()
        for node in (n1, n2, n3):
            node.start()
        for node in (n1, n2, n3):
            wait_until(lambda n=node: n.status()["has_quorum"], 20, "quorum after restart")
            keys = node.client().request(
                "GET", "/v1/kv/snap/", query={"keys": "1", "consistent": "1"}
            )
            assert len(keys) == 150
            assert node.client().request("GET", "/v1/kv/snap/149", query={"raw": "1"}) == b"149"
    finally:
        nodes.cleanup()


def test_a_node_restarted_from_a_snapshot_is_not_its_own_peer(tmp_path: Path) -> None:
    """After loading a snapshot, the Raft configuration holds the members once each: a
    one-node cluster keeps its quorum, and three nodes survive the loss of one."""
    single = NodeSet(tmp_path / "one", settings=COMPACT_OFTEN)
    try:
        (alone,) = single.form(1)
        for i in range(60):
            alone.client().request("PUT", f"/v1/kv/s/{i}", raw=b"x")
        wait_until((alone.data_dir / "raft" / "snapshot").exists, 20, "a snapshot")
        alone.kill()
        alone.start()
        wait_until(lambda: alone.status()["has_quorum"], 15, "quorum of the lone node")
        assert list(alone.status()["raft"]["peers"]) == []
        assert alone.client().request("PUT", "/v1/kv/after", raw=b"ok")
    finally:
        single.cleanup()

    trio = NodeSet(tmp_path / "three", settings=COMPACT_OFTEN)
    try:
        nodes = trio.form(3)
        for i in range(60):
            nodes[0].client().request("PUT", f"/v1/kv/t/{i}", raw=b"x")
        for node in nodes:
            wait_until((node.data_dir / "raft" / "snapshot").exists, 20, "snapshots")
        for node in nodes:
            node.kill()
        for node in nodes:
            node.start()
        for node in nodes:
            wait_until(lambda n=node: len(n.status()["raft"]["peers"]) == 2, 15, "two peers")
        nodes[2].kill()
        survivor = trio.leader(nodes[:2])
        assert survivor.client().request("PUT", "/v1/kv/after", raw=b"ok")
    finally:
        trio.cleanup()
