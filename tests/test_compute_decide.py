"""The compute agent's pure decisions (compute/decide.py `decide_instance`), the
instances' placement fit (compute/placement.py, state/instance_fit.py) and the placement
a create entry makes as it applies, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from symphonyd.compute.decide import decide_instance, detach_note
from symphonyd.compute.driver import DomainInfo
from symphonyd.compute.placement import choose_node
from symphonyd.errors import Conflict
from symphonyd.raft.entries import SCHEMA_VERSION, EntryType, spoken_body_version
from symphonyd.reconcile import Action
from symphonyd.state import cluster as cluster_table
from symphonyd.state import references
from symphonyd.state.store import Store

GiB = 1 << 30


def instance(**fields: Any) -> dict[str, Any]:
    return {
        "id": "i1",
        "name": "web",
        "status": "running",
        "power": "running",
        "restarts": 0,
        "restarts_done": 0,
        "domain": {"vcpus": 1, "memory": GiB},
        "applied": {"cpus": 1, "memory": GiB, "volumes": {}},
        "volumes": [],
        "at_next_start": [],
        "cpus": 1,
        "memory": GiB,
        "disk": 10 * GiB,
        "image_id": None,
        "placement": {"node": None},
        **fields,
    }


def domain(state: str, **fields: Any) -> DomainInfo:
    return DomainInfo(
        **{
            "instance_id": "i1",
            "name": "symphonyd-web",
            "state": state,
            "vcpus": 1,
            "memory": GiB,
            **fields,
        }
    )


READY_ROOT = {"status": "ready", "status_message": ""}


def verbs(actions: list[Any]) -> list[str]:
    return [a.verb for a in actions]


def test_pending_is_claimed_and_built_only_once_its_root_volume_is_ready() -> None:
    assert verbs(decide_instance(instance(status="pending"), None, None, True)) == ["claim"]
    creating = instance(status="creating")
    copying = {"status": "creating"}
    # the seed is written while the disk is made, once; the domain waits for the disk
    assert verbs(decide_instance(creating, copying, None, True)) == ["seed"]
    assert decide_instance(creating, copying, None, True, seeded=True) == []
    assert verbs(decide_instance(creating, READY_ROOT, None, True)) == ["build"]
    assert verbs(decide_instance(creating, READY_ROOT, None, True, seeded=True)) == ["build"]
    failed = decide_instance(
        creating, {"status": "failed", "status_message": "no room"}, None, True
    )
    assert verbs(failed) == ["fail"] and "no room" in failed[0].arg
    assert verbs(decide_instance(creating, None, None, True)) == ["fail"]


def test_a_running_instance_in_step_with_its_domain_needs_nothing() -> None:
    assert decide_instance(instance(), READY_ROOT, domain("running"), True) == []


def test_nothing_is_decided_about_domains_the_host_did_not_list() -> None:
    assert decide_instance(instance(), READY_ROOT, None, False) == []


def test_a_domain_the_host_lost_is_defined_again() -> None:
    assert verbs(decide_instance(instance(), READY_ROOT, None, True)) == ["define"]


def test_starting_starts_and_running_is_recorded() -> None:
    starting = instance(status="starting")
    assert verbs(decide_instance(starting, READY_ROOT, domain("stopped"), True)) == ["start"]
    recorded = decide_instance(starting, READY_ROOT, domain("running"), True)
    assert verbs(recorded) == ["record"] and recorded[0].arg["status"] == "running"


def test_a_guest_that_stops_by_itself_is_stopped_not_started_again() -> None:
    actions = decide_instance(instance(), READY_ROOT, domain("stopped"), True)
    assert verbs(actions) == ["record"]
    assert actions[0].arg["status"] == "stopped" and actions[0].arg["power"] == "stopped"
    assert "stopped from inside or outside" in actions[0].arg["status_message"]
    crashed = decide_instance(instance(), READY_ROOT, domain("crashed", reason="panicked"), True)
    assert "crashed: panicked" in crashed[0].arg["status_message"]


def test_stop_wish_on_a_running_domain_stops_it() -> None:
    stopping = instance(status="stopping", power="stopped")
    assert verbs(decide_instance(stopping, READY_ROOT, domain("running"), True)) == ["stop"]
    done = decide_instance(stopping, READY_ROOT, domain("stopped"), True)
    assert done[0].arg == {"status": "stopped", "power": "stopped", "status_message": ""}


def test_a_restart_asked_reboots_once() -> None:
    asked = instance(restarts=1, restarts_done=0)
    assert verbs(decide_instance(asked, READY_ROOT, domain("running"), True)) == ["reboot"]
    done = instance(restarts=1, restarts_done=1)
    assert decide_instance(done, READY_ROOT, domain("running"), True) == []


def test_a_changed_domain_size_is_recorded() -> None:
    actions = decide_instance(instance(), READY_ROOT, domain("running", vcpus=2), True)
    assert actions[0].arg == {"domain": {"vcpus": 2, "memory": GiB}}


def test_the_definition_follows_resizes_attaches_and_detaches() -> None:
    running = domain("running")
    assert verbs(decide_instance(instance(cpus=2), READY_ROOT, running, True)) == ["resize"]
    attach = decide_instance(instance(volumes=["d1"]), READY_ROOT, running, True)
    assert attach == [Action("attach", "d1")]
    held = {"cpus": 1, "memory": GiB, "volumes": {"d1": "vdb"}}
    # a disk the running guest holds: detached live where the driver can hot-unplug ...
    hot = decide_instance(instance(applied=held), READY_ROOT, running, True, hotplug=True)
    assert hot == [Action("detach", "d1")]
    # ... else it waits for the guest to stop, and says so once
    cold = decide_instance(instance(applied=held), READY_ROOT, running, True, hotplug=False)
    assert cold == [Action("defer detach", "d1")]
    said = instance(applied=held, at_next_start=[detach_note("d1")])
    assert decide_instance(said, READY_ROOT, running, True) == []
    stopped = instance(status="stopped", power="stopped", applied=held)
    assert decide_instance(stopped, READY_ROOT, domain("stopped"), True) == [Action("detach", "d1")]
    # a domain defined by a version that did not record its definition is adopted
    assert verbs(decide_instance(instance(applied=None), READY_ROOT, running, True)) == ["adopt"]


def test_deleting_removes_and_failed_waits_for_the_user() -> None:
    assert verbs(decide_instance(instance(status="deleting"), None, None, False)) == ["remove"]
    assert decide_instance(instance(status="failed"), READY_ROOT, None, True) == []


# -- placement ---------------------------------------------------------------------------


def service(sid: str, node: str, kind: str, **capacity: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "node": node,
        "type": kind,
        "driver": "libvirt" if kind == "compute" else "file",
        "pool": "default",
        "options": {},
        "health": {"ok": True, "message": "", "checked_at": "t"},
        "capacity": capacity,
    }


@pytest.fixture
def store() -> Store:
    store = Store()
    store.put("cluster", "cluster", {"id": "c1", "config": {}})
    for name in ("n1", "n2"):
        store.put("nodes", name, {"name": name})
        store.put(
            "services", f"c-{name}", service(f"c-{name}", name, "compute", cpus=2, memory=4 * GiB)
        )
        store.put(
            "services",
            f"b-{name}",
            service(f"b-{name}", name, "block", total=100 * GiB, free=100 * GiB),
        )
    return store


def placed(store: Store, sid: str, cpus: int, memory: int) -> None:
    iid = f"x{len(store.table('instances').values())}"
    store.put(
        "instances",
        iid,
        {
            **instance(id=iid, name=iid, cpus=cpus, memory=memory),
            "service_id": sid,
            "node": sid[2:],
        },
    )


def test_the_least_loaded_node_is_chosen_and_a_full_one_is_skipped(store: Store) -> None:
    placed(store, "c-n1", 4, GiB)
    assert choose_node(store, {"n1", "n2"}, instance())["node"] == "n2"
    placed(store, "c-n2", 8, GiB)  # n2 is full now: 2 CPUs x 4.0 overcommit
    assert choose_node(store, {"n1", "n2"}, instance())["node"] == "n1"


def test_an_explicit_node_that_is_short_says_which_resource(store: Store) -> None:
    placed(store, "c-n2", 8, GiB)
    with pytest.raises(Conflict, match="n2 has 0 vCPUs free, 1 asked"):
        choose_node(store, {"n1", "n2"}, instance(placement={"node": "n2"}))
    with pytest.raises(Conflict, match="GiB of memory free"):
        choose_node(store, {"n1", "n2"}, instance(memory=5 * GiB, placement={"node": "n1"}))
    with pytest.raises(Conflict, match="unreachable"):
        choose_node(store, {"n1"}, instance(placement={"node": "n2"}))


def test_beyond_every_node_is_refused_and_overcommit_is_a_cluster_setting(store: Store) -> None:
    with pytest.raises(Conflict, match="no healthy, reachable node"):
        choose_node(store, {"n1", "n2"}, instance(cpus=9))
    cluster_table.set_config(store, "compute.cpu_overcommit", 8.0)
    assert choose_node(store, {"n1", "n2"}, instance(cpus=16))["type"] == "compute"
    with pytest.raises(Conflict, match="no healthy, reachable node"):
        choose_node(store, {"n1", "n2"}, instance(cpus=17))


def test_the_root_disk_needs_room_in_the_same_nodes_block_pool(store: Store) -> None:
    with pytest.raises(Conflict, match="block pool"):
        choose_node(store, {"n1", "n2"}, instance(disk=200 * GiB, placement={"node": "n1"}))
    store.delete("services", "b-n1")
    with pytest.raises(Conflict, match="no healthy block service"):
        choose_node(store, {"n1", "n2"}, instance(placement={"node": "n1"}))
    assert choose_node(store, {"n1", "n2"}, instance())["node"] == "n2"


# -- placed as it is recorded (INSTANCE_CREATE body version 2) ----------------------------


def new_instance(iid: str, cpus: int, **fields: Any) -> dict[str, Any]:
    return {
        **instance(id=iid, name=iid, cpus=cpus, status="pending", domain=None, applied=None),
        "node": None,
        "service_id": None,
        "root_volume_id": None,
        "created_at": "2026-12-02T00:00:00Z",
        **fields,
    }


def test_a_burst_of_creates_spreads_as_each_is_recorded(store: Store) -> None:
    """Each create is placed with the state left by the ones before it in the log (the
    same on every node), so a burst spreads instead of piling on the best node of the
    moment; what fits nowhere now is recorded unplaced for the leader."""
    candidates = {"candidates": ["n1", "n2"]}
    homes = []
    for i in range(4):  # 4 vCPUs each; 2 host CPUs x 4.0 overcommit = 8 per node
        made = references.create_instance(
            store, new_instance(f"i{i}", 4), {**candidates, "root_volume_id": f"r{i}"}
        )
        assert made["ok"], made
        record, root = made["instance"], made["volume"]
        assert (record["status"], record["root_volume_id"]) == ("creating", f"r{i}")
        assert (root["node"], root["status"], root["name"]) == (
            record["node"],
            "creating",
            f"i{i}-root",
        )
        assert root["service_id"] == f"b-{record['node']}"
        homes.append(record["node"])
    assert homes == ["n1", "n2", "n1", "n2"]
    full = references.create_instance(
        store, new_instance("i4", 4), {**candidates, "root_volume_id": "r4"}
    )
    assert (full["instance"]["node"], full["instance"]["status"]) == (None, "pending")
    assert "volume" not in full and store.get("volumes", "r4") is None


def test_only_candidates_are_placed_on_and_an_old_body_is_left_for_the_leader(
    store: Store,
) -> None:
    only_n2 = {"candidates": ["n2"], "root_volume_id": "r1"}
    made = references.create_instance(store, new_instance("a", 1), only_n2)
    assert made["instance"]["node"] == "n2"
    asked = new_instance("b", 1, placement={"node": "n1"})  # an explicit node is honoured
    made = references.create_instance(
        store, asked, {"candidates": ["n1", "n2"], "root_volume_id": "r2"}
    )
    assert made["instance"]["node"] == "n1"
    unplaced = references.create_instance(store, new_instance("c", 1))  # body version 1
    assert (unplaced["instance"]["node"], unplaced["instance"]["status"]) == (None, "pending")


def test_the_body_version_written_is_one_every_member_applies() -> None:
    kind = EntryType.INSTANCE_CREATE
    assert spoken_body_version(kind, {"n1": SCHEMA_VERSION, "n2": SCHEMA_VERSION}) == 2
    assert spoken_body_version(kind, {"n1": SCHEMA_VERSION, "n2": 6}) == 1  # mid-upgrade
    assert spoken_body_version(EntryType.INSTANCE_UPDATE, {"n1": 6}) == 1
