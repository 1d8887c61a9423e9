"""Block volumes with the file driver, end to end in a 2-node cluster: services, a volume
made from an image on the node that lacks it (so the image is fetched), resize, snapshot,
deletion, bad input, and a node that was down catching up by itself."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet, run_json, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1024 * 1024


def pool_files(node: NodeProcess) -> list[str]:
    pool = node.data_dir / "volumes" / "default"
    return sorted(p.name for p in pool.iterdir()) if pool.exists() else []


def volume(node: NodeProcess, ref: str) -> dict[str, Any]:
    return dict(node.client().request("GET", f"/v1/volumes/{ref}"))


def test_volumes_end_to_end(nodeset: NodeSet, tmp_path: Path) -> None:
    n1, n2, _n3 = nodeset.form(3)
    for node in (n1, n2):
        assert run_json(node, "service", "new")["node"] == node.name
    again = n1.cli("service", "new")
    assert again.returncode == 1 and "already has a block service" in again.stderr
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    data = random.Random(4).randbytes(3 * MiB)
    image_file = tmp_path / "img.raw"
    image_file.write_bytes(data)
    image = run_json(n1, "image", "new", "d", "base", str(image_file))
    assert image["holders"] == ["n1"]

    # On n2, which lacks the image: it is fetched, then copied into the volume.
    created = run_json(
        n1, "volume", "create", "data", "--size", "64M", "--image", "base", "--node", "n2"
    )
    assert (created["status"], created["node"], created["actual_size"]) == ("ready", "n2", 64 * MiB)
    path = n2.data_dir / "volumes" / "default" / f"{created['id']}.raw"
    content = path.read_bytes()
    assert content[: len(data)] == data and not any(content[len(data) : len(data) + 4096])
    assert "n2" in n1.client().request("GET", "/v1/images/base")["holders"]

    assert run_json(n1, "volume", "resize", "data", "--size", "128M")["actual_size"] == 128 * MiB
    assert path.stat().st_size == 128 * MiB
    assert run_json(n1, "volume", "snapshot", "data", "before")["snapshots_done"] == ["before"]
    assert pool_files(n2) == sorted([path.name, f"{created['id']}@before.raw"])

    # The image cannot go while the volume uses it.
    refused = n1.cli("image", "rm", "base")
    assert refused.returncode == 1 and "used by volumes: data" in refused.stderr

    # Bad input: refused before anything is recorded.
    before = n1.client().request("GET", "/v1/volumes")["volumes"]
    for args, message in (
        (["volume", "create", "bad/name", "--size", "1G"], "invalid volume name"),
        (["volume", "create", "zero", "--size", "0"], "above zero"),
        (["volume", "create", "huge", "--size", "100T"], "free"),
        (["volume", "create", "where", "--size", "1G", "--node", "nowhere"], "no node"),
        (["volume", "create", "data", "--size", "1G"], "already exists"),
        (["volume", "create", "tiny", "--size", "1M", "--image", "base"], "the image needs"),
        (["volume", "resize", "data", "--size", "1M"], "only grow"),
    ):
        result = n1.cli(*args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert n1.client().request("GET", "/v1/volumes")["volumes"] == before

    # A node killed while a volume is being made, that misses a deletion while down,
    # catches up by itself: the volume ends ready (never `creating` for ever) and the
    # deleted one is really removed. (n3 keeps the quorum meanwhile.)
    pending = run_json(n1, "volume", "create", "later", "--size", "8M", "--node", "n2", "--no-wait")
    assert pending["status"] == "pending"
    n2.kill()
    n1.client().request("DELETE", "/v1/volumes/data")
    assert volume(n1, "data")["status"] == "deleting"
    n2.start()
    wait_until(lambda: volume(n1, "later")["status"] == "ready", 30, "n2 to make it")
    wait_until(
        lambda: all(
            v["name"] != "data" for v in n1.client().request("GET", "/v1/volumes")["volumes"]
        ),
        30,
        "the deleted volume to go",
    )
    assert pool_files(n2) == [f"{pending['id']}.raw"]
    assert n1.cli("image", "rm", "base").returncode == 0  # no volume uses it any more


def test_volumes_progress_side_by_side_on_one_node(nodeset: NodeSet, tmp_path: Path) -> None:
    """While one volume is being made from an image (its fetch held up: the only holder is
    stopped with SIGSTOP), a new empty volume, a resize and a delete on the same node
    complete: one worker per volume, not one queue per node."""
    members = nodeset.form(3)
    leader = nodeset.leader()
    # n1 (a follower) holds the image and is stopped; the leader and n2 keep the quorum,
    # so no write is left in flight by the stop
    n1, n2 = [node for node in members if node is not leader]
    run_json(n2, "service", "new")
    assert n2.cli("config", "set", "images.min_replicas", "1").returncode == 0
    image_file = tmp_path / "big.raw"
    image_file.write_bytes(random.Random(7).randbytes(16 * MiB) * 16)  # 256 MiB
    run_json(n1, "image", "new", "big", "big", str(image_file))
    old = run_json(n2, "volume", "create", "old", "--size", "8M")
    assert (old["status"], old["node"]) == ("ready", n2.name)

    before = int(n2.status()["revision"])
    big = run_json(n2, "volume", "create", "big", "--size", "512M", "--image", "big", "--no-wait")
    assert nodeset.leader() is leader
    assert n1.proc is not None
    os.kill(n1.proc.pid, signal.SIGSTOP)
    try:
        # each of these waits for its outcome, on the node whose agent holds the fetch
        assert run_json(n2, "volume", "create", "empty", "--size", "8M")["status"] == "ready"
        assert run_json(n2, "volume", "resize", "old", "--size", "16M")["actual_size"] == 16 * MiB
        assert n2.cli("volume", "rm", "old").returncode == 0
        during = volume(n2, "big")
        assert during["status"] == "creating", during  # its fetch waits: nothing waited on it
        # its progress lives in n2's memory; another node asks n2 for it
        seen = wait_until(lambda: volume(leader, "big")["progress"], 10, "the progress shown")
        assert seen["stage"] == "fetching image" and seen["total"] == 256 * MiB
        names = [v["name"] for v in n2.client().request("GET", "/v1/volumes")["volumes"]]
        assert sorted(names) == ["big", "empty"]
    finally:
        os.kill(n1.proc.pid, signal.SIGCONT)

    wait_until(lambda: volume(n2, "big")["status"] == "ready", 120, "the big volume", 0.2)
    assert volume(n2, "big")["actual_size"] == 512 * MiB
    assert pool_files(n2) == sorted([f"{big['id']}.raw", f"{volume(n2, 'empty')['id']}.raw"])
    # and none of it went through the log: no change of the volume carried a progress
    recorded = n2.recorded_events(before, "volumes")
    changes = [change for _, change in recorded if change["key"] == big["id"]]
    assert [c["record"]["status"] for c in changes][-1] == "ready"
    assert all(c["record"].get("progress") is None for c in changes), changes


def test_a_name_retried_after_a_failed_import_resolves_to_the_live_image(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    """A failed record under a name does not make the name ambiguous for `image show` or
    `volume create --image` once one live image has it."""
    (n1,) = nodeset.form(1)
    run_json(n1, "service", "new")
    image_file = tmp_path / "img.raw"
    image_file.write_bytes(random.Random(3).randbytes(MiB))
    wrong = n1.cli("image", "new", "d", "retried", str(image_file), "--sha256", "0" * 64)
    assert wrong.returncode == 1 and "checksum mismatch" in wrong.stderr, wrong.stderr
    made = run_json(n1, "image", "new", "d", "retried", str(image_file))
    images = n1.client().request("GET", "/v1/images")["images"]
    assert sorted(i["status"] for i in images if i["name"] == "retried") == ["failed", "ready"]
    assert run_json(n1, "image", "show", "retried")["id"] == made["id"]
    created = run_json(n1, "volume", "create", "from-it", "--size", "8M", "--image", "retried")
    assert (created["status"], created["image_id"]) == ("ready", made["id"])


def test_what_a_node_that_left_had_is_orphaned_then_removed(nodeset: NodeSet) -> None:
    """n3 leaves: its empty compute service goes with it; its block service and volume stay,
    shown orphaned, until the volume is removed (the record only: n3's file stays), then
    the service goes too."""
    n1, _n2, n3 = nodeset.form(3)
    run_json(n3, "service", "new")
    run_json(n3, "service", "new", "compute")
    made = run_json(n1, "volume", "create", "data3", "--size", "8M", "--node", "n3")
    assert made["status"] == "ready"
    left = n3.cli("leave")
    assert left.returncode == 0, left.stderr

    def n3_services() -> list[dict[str, Any]]:
        listed = n1.client().request("GET", "/v1/services")["services"]
        return [s for s in listed if s["node"] == "n3"]

    wait_until(lambda: [s["type"] for s in n3_services()] == ["block"], 20, "compute gone")
    (block,) = n3_services()
    assert block["health"]["message"].startswith("orphaned: node n3 is no longer a member")
    shown = volume(n1, "data3")
    assert (shown["status"], shown["last_status"]) == ("orphaned", "ready")
    assert "`symphonyd volume rm` removes this record" in shown["status_message"]
    listed = n1.cli("volume", "list")
    assert "orphaned" in listed.stdout
    removed = n1.cli("volume", "rm", "data3")
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: not n3_services(), 20, "n3's block service removed with its last volume")
    assert n1.client().request("GET", "/v1/volumes")["volumes"] == []
    assert f"{made['id']}.raw" in pool_files(n3)  # a departed host's files are its own
