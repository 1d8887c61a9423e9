"""Block volumes with the file driver, end to end in a 2-node cluster: services, a volume
made from an image on the node that lacks it (so the image is fetched), resize, snapshot,
deletion, bad input, and a node that was down catching up by itself."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1024 * 1024


def run_json(node: NodeProcess, *args: str) -> Any:
    result = node.cli(*args, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
