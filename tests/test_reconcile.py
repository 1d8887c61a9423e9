"""The reconcile base and the agents' decide steps, without a cluster.

The decide functions are pure: a record (and what the host reports) in, actions out. The
base's passes are driven one at a time (`reconcile_once`) with a recording agent, so the
worker rules (one worker per object, in order; a bound on workers; retry and give-up) are
checked without Raft; the agents on real clusters are tested in test_volumes.py,
test_lvm_cluster.py and test_block_recovery.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest

from symphonyd.block.agent import decide_volume
from symphonyd.block.driver import VolumeInfo
from symphonyd.block.lvm_agent import decide_lvm
from symphonyd.errors import Conflict, DriverError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType, check_schema
from symphonyd.reconcile import (
    Action,
    GiveUp,
    Progress,
    Reconciler,
    RetryLater,
    claim,
    run_blocking,
)

MiB = 1024 * 1024


def volume(status: str, **fields: Any) -> dict[str, Any]:
    record = {"id": "v1", "status": status, "size": 8 * MiB, "snapshots": []}
    record["snapshots_done"] = []
    record.update(fields)
    return record


def info(size: int = 8 * MiB) -> VolumeInfo:
    return VolumeInfo(id="v1", size=size, allocated=0, path="/x/v1.raw", format="raw")


# -- decide: volumes -----------------------------------------------------------------------


def test_volume_decisions_follow_the_status() -> None:
    assert decide_volume(volume("pending"), None) == [Action("claim"), Action("create")]
    assert decide_volume(volume("creating"), None) == [Action("recreate")]
    assert decide_volume(volume("deleting"), {}) == [Action("delete")]
    assert decide_volume(volume("failed"), {"v1": info()}) == []


def test_a_ready_volume_is_compared_with_its_pool() -> None:
    assert decide_volume(volume("ready"), {"v1": info()}) == []
    assert decide_volume(volume("ready"), None) == []  # the pool did not answer: no guess
    assert decide_volume(volume("ready"), {}) == [Action("lost")]
    grown = volume("ready", size=16 * MiB, snapshots=["a", "b"], snapshots_done=["a"])
    assert decide_volume(grown, {"v1": info()}) == [
        Action("resize", 16 * MiB),
        Action("snapshot", "b"),
    ]
    assert decide_volume(volume("ready", size=4 * MiB), {"v1": info()}) == []  # never shrink


def test_lvm_decisions_follow_the_status() -> None:
    assert decide_lvm({"status": "pending"}) == [Action("claim"), Action("make")]
    assert decide_lvm({"status": "creating"}) == [Action("make")]
    assert decide_lvm({"status": "deleting"}) == [Action("remove")]
    assert decide_lvm({"status": "ready"}) == [] and decide_lvm({"status": "failed"}) == []


# -- the base ------------------------------------------------------------------------------


class Recording(Reconciler[dict[str, Any]]):
    """Objects whose actions are their `todo` list; acting records and obeys `behave`."""

    name = "test"
    concurrency = 2
    retry_delay = 0.05

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        super().__init__(cluster=None)  # type: ignore[arg-type]  # passes need no cluster
        self.objects = objects
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.most_running = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.gave_up: list[tuple[str, str]] = []

    def wanted(self) -> dict[str, dict[str, Any]]:
        return dict(self.objects)

    def decide(self, record: dict[str, Any], observed: Any) -> list[Action]:
        return [Action(verb) for verb in record["todo"]]

    async def act(self, record: dict[str, Any], action: Action) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.log.append((record["id"], f"start {action.verb}"))
            if action.verb in self.gates:
                await self.gates[action.verb].wait()
            if action.verb == "retry":
                raise RetryLater("not yet")
            if action.verb == "impossible":
                raise GiveUp("cannot be made")
            if action.verb == "changed":
                raise Conflict("claimed elsewhere")
            if action.verb == "broken":
                raise DriverError("the host said no")
            self.log.append((record["id"], f"end {action.verb}"))
        finally:
            self.running -= 1

    async def give_up(self, record: dict[str, Any], reason: str) -> None:
        self.gave_up.append((record["id"], reason))
        record["todo"] = []

    async def settle(self) -> None:
        while self.workers:
            await asyncio.gather(*self.workers.values())


async def test_one_worker_per_object_in_order_and_a_bound_on_workers() -> None:
    agent = Recording(
        {
            "slow": {"id": "slow", "todo": ["copy", "finish"]},
            "a": {"id": "a", "todo": ["make"]},
            "b": {"id": "b", "todo": ["make"]},
        }
    )
    agent.gates["copy"] = asyncio.Event()
    assert sorted(await agent.reconcile_once()) == ["a", "b", "slow"]
    assert await agent.reconcile_once() == []  # busy objects get no second worker
    for _ in range(50):  # the gated copy holds one slot; a and b share the other
        if ("a", "end make") in agent.log and ("b", "end make") in agent.log:
            break
        await asyncio.sleep(0.01)
    assert ("a", "end make") in agent.log and ("b", "end make") in agent.log
    assert ("slow", "end copy") not in agent.log  # a and b finished while slow copies
    agent.gates["copy"].set()
    await agent.settle()
    slow = [entry for name, entry in agent.log if name == "slow"]
    assert slow == ["start copy", "end copy", "start finish", "end finish"]
    assert agent.most_running == 2  # concurrency


async def test_retry_later_backs_off_and_give_up_records_the_reason() -> None:
    agent = Recording(
        {
            "r": {"id": "r", "todo": ["retry"]},
            "g": {"id": "g", "todo": ["impossible"]},
            "c": {"id": "c", "todo": ["changed"]},
            "e": {"id": "e", "todo": ["broken"]},
        }
    )
    await agent.reconcile_once()
    await agent.settle()
    assert agent.gave_up == [("g", "cannot be made")]
    assert await agent.reconcile_once() == []  # r and e back off; c and g have nothing to do
    agent.objects["c"]["todo"] = []
    await asyncio.sleep(0.06)
    assert sorted(await agent.reconcile_once()) == ["e", "r"]  # tried again after the delay
    await agent.settle()
    assert await agent.reconcile_once() == []  # the second failure doubled e's delay
    agent.objects["r"]["todo"] = agent.objects["e"]["todo"] = []
    await asyncio.sleep(0.12)
    assert await agent.reconcile_once() == []
    assert agent._backoff == {}  # nothing to do any more: no backoff kept


class Proposals:
    """What a claim proposes, on a cluster whose members speak `schemas`."""

    def __init__(self, schemas: dict[str, int]) -> None:
        self.schemas = schemas
        self.entries: list[Entry] = []

    def require_schema(self, entry_type: int) -> None:
        check_schema(entry_type, self.schemas)

    async def propose_ok(self, entry: Entry, idempotent: bool = False) -> dict[str, Any]:
        entry.encode()  # its body fits its schema
        self.entries.append(entry)
        return {"ok": True}


async def test_a_claim_is_a_record_claim_and_a_patch_while_a_member_is_older() -> None:
    current = Proposals({"n1": 8, "n2": 8})
    await claim(cast(Cluster, current), "pvs", "pv1", "n2")
    (entry,) = current.entries
    assert entry.type == EntryType.RECORD_CLAIM
    assert {k: entry.body[k] for k in ("table", "id", "node", "from_status", "to_status")} == {
        "table": "pvs",
        "id": "pv1",
        "node": "n2",
        "from_status": "pending",
        "to_status": "creating",
    }
    mixed = Proposals({"n1": 8, "n2": 7})  # mid rolling upgrade: n2 knows no RECORD_CLAIM
    await claim(cast(Cluster, mixed), "pvs", "pv1", "n2")
    (entry,) = mixed.entries
    assert entry.type == EntryType.PV_UPDATE
    assert entry.body["expect_status"] == "pending"
    assert entry.body["fields"]["status"] == "creating"


async def test_run_blocking_waits_for_its_thread_when_cancelled() -> None:
    stop = threading.Event()
    finished = threading.Event()

    def work() -> None:
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        finished.set()

    task = asyncio.create_task(run_blocking(work, on_cancel=stop.set))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()  # the thread ended before the cancellation was raised


def test_progress_reports_stage_and_bytes_and_asks_a_cancelled_copy_to_stop() -> None:
    progress = Progress()
    progress.set_stage("fetching image", 100, lambda: 40)
    assert progress.snapshot() == {"stage": "fetching image", "done": 40, "total": 100}
    progress.set_stage("copying image", 100)
    assert progress.copied(60) is False
    assert progress.snapshot() == {"stage": "copying image", "done": 60, "total": 100}
    progress.cancelled = True
    assert progress.copied(70) is True


# -- one resolve rule ------------------------------------------------------------------------


def test_one_lookup_rule_for_every_resource() -> None:
    from symphonyd.errors import NotFound
    from symphonyd.state.lookup import matches, resolve_one

    records = [
        {"id": "aaaa1111", "name": "web", "status": "failed"},
        {"id": "aaaa2222", "name": "web", "status": "ready"},
        {"id": "bbbb3333", "name": "db", "status": "ready"},
        {"id": "bbbb4444", "name": "db", "status": "ready"},
        {"id": "cccc5555", "name": "aaaa2222", "status": "ready"},  # a name that is an id
    ]
    one = lambda ref: resolve_one(matches(records, ref), ref, "thing")  # noqa: E731
    assert one("aaaa2222")["id"] == "aaaa2222"  # the id wins over a name
    assert one("web")["id"] == "aaaa2222"  # the failed one does not make it ambiguous
    assert one("bbbb3")["id"] == "bbbb3333"  # a unique prefix
    with pytest.raises(Conflict) as caught:
        one("db")
    assert caught.value.http_status == 409 and "bbbb3333" in caught.value.message
    with pytest.raises(Conflict):
        one("bbbb")  # an ambiguous prefix
    with pytest.raises(NotFound):
        one("aaa")  # under 4 characters, a prefix is not tried
    with pytest.raises(NotFound):
        one("nothing")
    dead = [{"id": "d1d1d1", "name": "x", "status": "failed"}] * 2
    with pytest.raises(Conflict):
        resolve_one(matches(dead, "x"), "x", "thing")  # no live one: still ambiguous
    assert matches(records, "web", key=None) == []  # records without names (deployments)


# -- outcomes, not heartbeats ----------------------------------------------------------------


def test_a_health_check_is_written_only_when_it_changed() -> None:
    from symphonyd.block.service import health_changed

    total = 100 * 1024 * MiB
    record = {
        "health": {"ok": True, "message": "ok", "checked_at": "t"},
        "capacity": {"total": total, "free": 50 * 1024 * MiB},
    }
    same = {"total": total, "free": 50 * 1024 * MiB - 10 * MiB}  # someone wrote 10 MiB
    assert not health_changed(record, True, "ok", same)
    assert health_changed(record, False, "ok", same)
    assert health_changed(record, True, "pool almost full", same)
    assert health_changed(record, True, "ok", {"total": total, "free": 40 * 1024 * MiB})
    assert health_changed(record, True, "ok", {"total": 2 * total, "free": 50 * 1024 * MiB})
    assert health_changed(record, True, "ok", None)
    assert health_changed({"health": None, "capacity": None}, True, "ok", same)  # first report


# -- last_error: an explicit field, not a message prefix -------------------------------------


def test_records_written_before_last_error_read_it_as_none() -> None:
    from symphonyd.state import lvm, volumes
    from symphonyd.state.store import Store

    store = Store()
    store.put(volumes.TABLE, "v1", {"id": "v1", "name": "old", "node": "n1", "pool": "vg"})
    store.put(lvm.VGS, "g1", {"id": "g1", "name": "vg", "node": "n1", "status": "ready"})
    store.commit()
    assert volumes.get(store, "v1")["last_error"] is None  # type: ignore[index]
    assert [v["last_error"] for v in volumes.all_volumes(store)] == [None]
    assert volumes.find(store, "old")[0]["last_error"] is None
    assert lvm.get(store, lvm.VGS, "g1")["last_error"] is None  # type: ignore[index]
    assert [g["last_error"] for g in lvm.find(store, lvm.VGS, "vg")] == [None]
    # applying an entry stores what it was given: no field appears on its own
    volumes.update(store, "v1", {"status_message": "x"})
    store.commit()
    assert "last_error" not in store.get(volumes.TABLE, "v1")  # type: ignore[operator]
    failed = volumes.change_error("resize", "no room", "2024-05-01T10:00:00.000000Z")
    assert failed == {"action": "resize", "message": "no room", "at": failed["at"]}
    volumes.update(store, "v1", {"last_error": failed})
    store.commit()
    assert volumes.get(store, "v1")["last_error"] == failed  # type: ignore[index]


def test_the_cli_tells_a_failed_change_by_last_error_alone() -> None:
    from symphonyd.cli.block import failed_change

    at = "2024-05-01T10:00:00.000000Z"
    resize = {"action": "resize", "message": "lvextend vg/sy-v1 failed: no room", "at": at}
    remove = {"action": "remove", "message": "volume group vg still holds 1", "at": at}
    assert failed_change({"status": "ready", "last_error": resize}) == (
        "last change failed: lvextend vg/sy-v1 failed: no room"
    )
    assert failed_change({"status": "ready", "last_error": remove}) == (
        "not removed: volume group vg still holds 1"
    )
    # the text people read decides nothing any more; a record without the field is clean
    stale = {"status": "ready", "last_error": None, "status_message": "last change failed: x"}
    assert failed_change(stale) is None
    assert failed_change({"status": "ready", "status_message": "not removed: x"}) is None


class SlowObserver(Recording):
    """`observe` waits for a gate, so a worker can end while a pass is observing."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        super().__init__(objects)
        self.observing = asyncio.Event()
        self.observed_gate = asyncio.Event()

    async def observe(self, wanted: Any) -> Any:
        self.observing.set()
        await self.observed_gate.wait()
        return None


async def test_a_worker_that_ends_while_a_pass_observes_is_not_decided_from_a_stale_read() -> None:
    agent = SlowObserver({"a": {"id": "a", "todo": ["claim"]}})
    agent.gates["claim"] = asyncio.Event()
    agent.observed_gate.set()
    assert await agent.reconcile_once() == ["a"]  # the worker claims, held at its gate
    agent.observed_gate.clear()
    agent.observing.clear()
    stale = dict(agent.objects)  # what the next pass reads: still "claim" to do
    agent.wanted = lambda: stale  # type: ignore[method-assign]
    second = asyncio.create_task(agent.reconcile_once())
    await agent.observing.wait()
    agent.gates["claim"].set()  # the worker ends (and would have changed the record)
    await agent.settle()
    agent.observed_gate.set()
    assert await second == []  # not started again from the read made before it ended
    assert [entry for entry in agent.log if entry[1] == "start claim"] == [("a", "start claim")]
