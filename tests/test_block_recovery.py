"""Block volumes when nodes fail: a node killed while it is making a volume (fetching and
copying a large image) comes back and finishes it; a dead node's service shows unhealthy
within seconds and nothing is placed there. And the scheduler's choices, on a real store."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from symphonyd.errors import Conflict, NotFound
from symphonyd.scheduler import choose
from symphonyd.state.store import Store
from tests.nodes import NodeProcess, NodeSet, run_json, wait_until

MiB = 1024 * 1024


def volume(node: NodeProcess, ref: str) -> dict[str, Any]:
    return dict(node.client().request("GET", f"/v1/volumes/{ref}"))


def service_of(node: NodeProcess, name: str) -> dict[str, Any]:
    services = node.client().request("GET", "/v1/services")["services"]
    return next(s for s in services if s["node"] == name)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_node_killed_while_creating_finishes_the_volume(nodeset: NodeSet, tmp_path: Path) -> None:
    n1, n2, _n3 = nodeset.form(3)  # n3 keeps the quorum while n2 is down
    for node in (n1, n2):
        run_json(node, "service", "new")
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    image_file = tmp_path / "big.raw"
    digest = hashlib.sha256()
    with open(image_file, "wb") as f:
        for _ in range(24):
            chunk = os.urandom(16 * MiB)
            digest.update(chunk)
            f.write(chunk)
    size = 24 * 16 * MiB
    image = run_json(n1, "image", "new", "big", "big", str(image_file))
    assert image["holders"] == ["n1"]

    made = run_json(
        n1,
        "volume",
        "create",
        "big",
        "--size",
        "512M",
        "--image",
        "big",
        "--node",
        "n2",
        "--no-wait",
    )
    # n2 fetches 384 MiB over HTTPS, then copies it: kill it in the middle of that.
    wait_until(lambda: volume(n1, "big")["status"] == "creating", 30, "n2 to claim it")
    work = wait_until(lambda: volume(n1, "big")["progress"], 10, "progress to be recorded")
    assert work["stage"] in ("fetching image", "copying image") and work["total"] == size
    assert 0 <= work["done"] <= size
    n2.kill()
    assert volume(n1, "big")["status"] == "creating"  # nobody else touches n2's work
    n2.start()

    def finished() -> bool:
        record = volume(n1, "big")
        assert record["status"] != "failed", (record, n2.log())
        return bool(record["status"] == "ready")

    try:
        wait_until(finished, 90, "n2 to finish it", 0.2)
    except AssertionError as exc:  # say where n2 is, not only that it is late
        raise AssertionError(f"{exc}\nvolume: {volume(n1, 'big')}\nn2's log:\n{n2.log()}") from None
    done = volume(n1, "big")
    assert done["actual_size"] == 512 * MiB and done["id"] == made["id"]
    assert done["progress"] is None
    path = n2.data_dir / "volumes" / "default" / f"{made['id']}.raw"
    check = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size
        while remaining:
            chunk = f.read(min(16 * MiB, remaining))
            check.update(chunk)
            remaining -= len(chunk)
        assert not any(f.read(MiB))  # the rest of the volume is zeros
    assert check.hexdigest() == digest.hexdigest()
    leftovers = [p.name for p in (n2.data_dir / "volumes" / "default").iterdir()]
    assert leftovers == [path.name]


@pytest.mark.cluster
@pytest.mark.slow
def test_a_dead_nodes_service_is_unhealthy_and_gets_nothing(nodeset: NodeSet) -> None:
    n1, n2, _n3 = nodeset.form(3)
    for node in (n1, n2):
        run_json(node, "service", "new")
    assert service_of(n1, "n2")["health"]["ok"] is True
    n2.kill()
    started = time.monotonic()
    wait_until(lambda: not service_of(n1, "n2")["health"]["ok"], 10, "n2 to show unhealthy")
    seen_after = time.monotonic() - started
    assert service_of(n1, "n2")["health"]["message"] == "node n2 is unreachable"
    refused = n1.cli("volume", "create", "there", "--size", "1G", "--node", "n2")
    assert refused.returncode == 1 and "no healthy, reachable block service" in refused.stderr
    placed = run_json(n1, "volume", "create", "anywhere", "--size", "1G")
    assert placed["node"] == "n1" and placed["status"] == "ready"
    print(f"n2 shown unreachable {seen_after:.2f} s after kill -9")  # for the issue note


# -- the scheduler's choice, on a store filled by hand ---------------------------------------


def service(node: str, free: int, ok: bool = True, pool: str = "default") -> dict[str, Any]:
    return {
        "id": f"svc-{node}-{pool}",
        "node": node,
        "type": "block",
        "driver": "file",
        "pool": pool,
        "options": {},
        "health": {"ok": ok, "message": ""},
        "capacity": {"total": free, "free": free},
    }


@pytest.fixture
def store() -> Store:
    made = Store()
    for name in ("a", "b", "c"):
        made.put("nodes", name, {"name": name, "raft_addr": f"{name}:1"})
    made.put("services", "svc-a-default", service("a", 10 * MiB))
    made.put("services", "svc-b-default", service("b", 20 * MiB))
    made.put("services", "svc-c-default", service("c", 90 * MiB, ok=False))
    made.put("images", "img", {"id": "img", "holders": ["a"]})
    made.commit()
    return made


def test_the_scheduler_prefers_the_image_holder_then_the_most_room(store: Store) -> None:
    everyone = {"a", "b", "c"}
    assert choose(store, everyone, MiB, None, None, None)["node"] == "b"
    assert choose(store, everyone, MiB, "img", None, None)["node"] == "a"
    # The holder has no room for this one: the next best.
    assert choose(store, everyone, 15 * MiB, "img", None, None)["node"] == "b"


def test_the_scheduler_skips_unhealthy_unreachable_and_counts_pending_space(
    store: Store,
) -> None:
    with pytest.raises(Conflict, match="no healthy, reachable block service on node c"):
        choose(store, {"a", "b", "c"}, MiB, None, "c", None)  # c is unhealthy
    assert choose(store, {"a", "c"}, MiB, None, None, None)["node"] == "a"  # b unreachable
    with pytest.raises(NotFound, match="no node named 'z'"):
        choose(store, {"a", "b"}, MiB, None, "z", None)
    with pytest.raises(Conflict, match="in pool fast"):
        choose(store, {"a", "b"}, MiB, None, None, "fast")
    # 15 MiB already promised to b by a pending volume: a 10 MiB one no longer fits there.
    store.put(
        "volumes",
        "v1",
        {"id": "v1", "status": "pending", "service_id": "svc-b-default", "size": 15 * MiB},
    )
    store.commit()
    assert choose(store, {"a", "b"}, 10 * MiB, None, None, None)["node"] == "a"
    with pytest.raises(Conflict, match="has 11534336 bytes free"):
        choose(store, {"a", "b"}, 11 * MiB, None, None, None)
