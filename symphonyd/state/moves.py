"""A cold move of an instance to another node, as steps of one entry type (INSTANCE_MOVE),
each checked and applied in one step across the instances and volumes tables.

    begin   the move is recorded (target node and services, whether it ran); the
            instance is asked to stop
    copy    once it is stopped, on its node: a copy of each of its volumes is recorded on
            the target node (`source`: the volume it is made from; named `<name>-mv`)
    abort   a copy failed: the copies are removed, the instance stays where it was
            (started again if it ran), `last_error` says why
    switch  every copy is ready: the instance belongs to the target node, on the copies
            (`creating`: the target's agent defines it and starts it if it ran)
    finish  it runs (or is stopped, as asked) there: the source volumes are removed and
            the copies take their names

The move's record (`move` on the instance): {node, service_id, block_service_id,
was_running, phase, volumes: {source id: copy id}, sources: [source ids] once switched}.
While a move runs, the copies and the sources are in use (nothing else may take or remove
them). Like all of state/, this knows nothing of Raft or the API.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import instances, volumes
from symphonyd.state.store import Store, failure

__all__ = ["MOVABLE", "move_step"]

MOVABLE = ("stopped", "starting", "running", "stopping")


def move_step(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    record = instances.get(store, body["id"])
    if record is None:
        return failure("not_found", f"no instance {body['id']}")
    step = body["step"]
    handler = _STEPS.get(step)
    if handler is None:
        return failure("invalid", f"unknown move step {step!r}")
    return handler(store, dict(record), body)


def _begin(store: Store, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    move = body["move"]
    if record.get("move"):
        return failure("conflict", f"instance {record['name']} is already moving")
    if record["status"] not in MOVABLE:
        return failure("conflict", f"instance {record['name']} is {record['status']}")
    if move["node"] == record["node"]:
        return failure("conflict", f"instance {record['name']} is on node {move['node']} already")
    fields: dict[str, Any] = {
        "move": {**move, "phase": "stopping", "volumes": {}, "sources": []},
        "power": "stopped",
        "last_error": None,
        "updated_at": body["now"],
    }
    if record["status"] in ("running", "starting"):
        fields.update(status="stopping", stop={"force": False, "timeout": move["timeout"]})
    return instances.update(store, record["id"], fields)


def _copy(store: Store, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    move = record.get("move") or {}
    if move.get("phase") != "stopping" or record["status"] != "stopped":
        return failure("conflict", f"instance {record['name']} is not stopped for its move")
    taken = {v["name"] for v in volumes.all_volumes(store)}
    for copy in body["volumes"]:  # all or none
        if copy["name"] in taken or volumes.get(store, copy["id"]) is not None:
            return failure("conflict", f"a volume named {copy['name']!r} already exists")
    for copy in body["volumes"]:
        volumes.create(store, copy)
    mapping = {c["source"]["volume_id"]: c["id"] for c in body["volumes"]}
    fields = {"move": {**move, "phase": "copying", "volumes": mapping}, "updated_at": body["now"]}
    return instances.update(store, record["id"], fields)


def _abort(store: Store, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    move = record.get("move") or {}
    if move.get("phase") not in ("stopping", "copying"):
        return failure("conflict", f"instance {record['name']} has no move to abort")
    volumes.discard(store, list(move.get("volumes", {}).values()), body["now"])
    fields: dict[str, Any] = {
        "move": None,
        "last_error": {"action": "move", "message": body["reason"], "at": body["now"]},
        "updated_at": body["now"],
    }
    if move.get("was_running"):
        fields.update(power="running", stop=None)
        if record["status"] == "stopped":
            fields["status"] = "starting"
    return instances.update(store, record["id"], fields)


def _switch(store: Store, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    move = record.get("move") or {}
    mapping = move.get("volumes", {})
    if move.get("phase") != "copying" or record["status"] != "stopped":
        return failure("conflict", f"instance {record['name']} is not ready to switch")
    for copy_id in mapping.values():
        copy = volumes.get(store, copy_id)
        if copy is None or copy["status"] != "ready":
            return failure("conflict", f"the copy {copy_id} is not ready")
    fields = {
        "node": move["node"],
        "service_id": move["service_id"],
        "root_volume_id": mapping.get(record["root_volume_id"], record["root_volume_id"]),
        "volumes": [mapping.get(v, v) for v in record.get("volumes", [])],
        "status": "creating",
        "status_message": "",
        "power": "running" if move.get("was_running") else "stopped",
        "stop": None,
        "applied": None,
        "domain": None,
        "at_next_start": [],
        "move": {**move, "phase": "switched", "sources": list(mapping)},
        "updated_at": body["now"],
    }
    return instances.update(store, record["id"], fields)


def _finish(store: Store, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    move = record.get("move") or {}
    if move.get("phase") != "switched":
        return failure("conflict", f"instance {record['name']} has not switched node")
    names = {}
    for source_id in move.get("sources", []):
        source = volumes.get(store, source_id)
        if source is not None:
            names[source_id] = source["name"]
    fields = {"move": None, "updated_at": body["now"]}
    result = instances.update(store, record["id"], fields)
    volumes.discard(store, list(names), body["now"])
    for source_id, copy_id in move.get("volumes", {}).items():
        copy = volumes.get(store, copy_id)
        if copy is not None and source_id in names:
            volumes.update(store, copy_id, {"name": names[source_id], "source": None})
    return result


_STEPS = {"begin": _begin, "copy": _copy, "abort": _abort, "switch": _switch, "finish": _finish}
