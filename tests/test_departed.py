"""What a departed node leaves is chosen for removal purely (symphonyd/departed.py)."""

from __future__ import annotations

from typing import Any

from symphonyd.departed import doomed, orphaned_view
from symphonyd.raft.entries import EntryType
from symphonyd.state.store import Store

NOW = "2026-12-02T00:00:00Z"


def record(rid: str, node: str, status: str, service: str, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "node": node, "status": status, "service_id": service, **fields}


def plan(store: Store) -> list[tuple[EntryType, str]]:
    return [(EntryType(e.type), e.body["id"]) for e in doomed(store, NOW)]


def test_only_what_a_departed_node_marked_for_removal_goes_instances_first() -> None:
    store = Store()
    store.put("nodes", "n1", {"name": "n1"})  # n2 has departed: no node record
    store.put("services", "b1", {"id": "b1", "node": "n1", "type": "block"})
    store.put("services", "b2", {"id": "b2", "node": "n2", "type": "block"})
    store.put("services", "c2", {"id": "c2", "node": "n2", "type": "compute"})
    store.put("services", "e2", {"id": "e2", "node": "n2", "type": "compute"})
    store.put("instances", "i1", record("i1", "n1", "deleting", "c1"))  # n1's agent does it
    store.put("instances", "i2", record("i2", "n2", "deleting", "c2", keep_volumes=True))
    store.put("instances", "i3", record("i3", "n2", "running", "c2"))  # not asked
    store.put("volumes", "v1", record("v1", "n2", "deleting", "b2"))
    store.put("volumes", "v2", record("v2", "n2", "ready", "b2"))
    assert plan(store) == [
        (EntryType.INSTANCE_DELETE, "i2"),
        (EntryType.VOLUME_DELETE, "v1"),
        (EntryType.SERVICE_DELETE, "e2"),  # holds nothing; b2 and c2 still hold records
    ]
    assert doomed(store, NOW)[0].body == {"id": "i2", "keep_volumes": True, "now": NOW}
    for rid in ("i2", "i3"):
        store.delete("instances", rid)
    for rid in ("v1", "v2"):
        store.delete("volumes", rid)
    store.delete("services", "e2")
    assert plan(store) == [(EntryType.SERVICE_DELETE, "b2"), (EntryType.SERVICE_DELETE, "c2")]


def test_an_orphaned_record_says_what_it_was_and_what_to_do() -> None:
    view = orphaned_view({"node": "n3", "status": "running"}, "instance")
    assert (view["status"], view["last_status"]) == ("orphaned", "running")
    assert "`symphonyd instance rm` removes this record" in view["status_message"]
