"""Lifecycle tables: what each node knows, where each lifecycle stands, and deployments.

* `lifecycle_catalogs`, by node: the lifecycles a node loaded ({name: origin}) and its
  broken modules ({module: error}); published by the node at start.
* `lifecycles`, by `<node>/<Lifecycle>`: `applied` (the stack of applied states, initial
  first), `data` (the bodies' runtime data, JSON), `calls` ({"State/provide": {values,
  returns, deployment, at}}: the provides that hold on that node, with the values they
  were called with — secrets sealed — and what they returned), `updated_at`. A record
  appears with the first step that runs there; a lifecycle without one is in its initial
  state.
* `deployments`, by id: a plan being executed (see `lifecycle/planner.py` for the steps).
  `status`: `running` until every step is `done` (then `done`), or one `failed` (then
  `failed`, the others left as they are); `undone` once an undo deployment of it is done.

Step changes are applied with `expect` (the status the step must still have), so two
agents never run one step; the change of the lifecycle record a finished step made is
applied in the same entry, so a step is never done without its state change or the
reverse.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state import lookup
from symphonyd.state.store import Record, Store, failure

CATALOGS = "lifecycle_catalogs"
LIFECYCLES = "lifecycles"
DEPLOYMENTS = "deployments"

STEP_STATUSES = ("pending", "running", "done", "failed")


def key(node: str, lifecycle: str) -> str:
    return f"{node}/{lifecycle}"


def catalog(store: Store, node: str) -> Record | None:
    return store.get(CATALOGS, node)


def set_catalog(store: Store, record: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "catalog": store.put(CATALOGS, record["node"], record)}


def get(store: Store, node: str, lifecycle: str) -> Record | None:
    return store.get(LIFECYCLES, key(node, lifecycle))


def on_node(store: Store, node: str) -> list[Record]:
    table = store.table(LIFECYCLES)
    return [r for k in table.keys_with_prefix(node + "/") if (r := table.get(k)) is not None]


def all_lifecycles(store: Store) -> list[Record]:
    return store.table(LIFECYCLES).values()


def deployment(store: Store, deployment_id: str) -> Record | None:
    return store.get(DEPLOYMENTS, deployment_id)


def all_deployments(store: Store) -> list[Record]:
    return store.table(DEPLOYMENTS).values()


def find_deployments(store: Store, ref: str) -> list[Record]:
    """Deployments `ref` may mean: the id or a unique id prefix (they have no name)."""
    return lookup.matches(
        all_deployments(store), ref, key=None, by_id=lambda i: deployment(store, i)
    )


def create_deployment(store: Store, record: dict[str, Any]) -> dict[str, Any]:
    if deployment(store, record["id"]) is not None:
        return failure("conflict", f"deployment {record['id']} already exists")
    undoes = record.get("undoes")
    if undoes is not None:
        target = deployment(store, undoes)
        if target is None:
            return failure("not_found", f"no deployment {undoes}")
        if target["status"] in ("running", "undone"):
            return failure("conflict", f"deployment {undoes} is {target['status']}")
    record = {**record, "status": _deployment_status(record["steps"])}
    return {"ok": True, "deployment": store.put(DEPLOYMENTS, record["id"], record)}


def _deployment_status(steps: list[dict[str, Any]]) -> str:
    statuses = {step["status"] for step in steps}
    if "failed" in statuses:
        return "failed"
    if statuses <= {"done"}:
        return "done"
    return "running"


def update_step(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    """Change one step (`fields`), only if it is still `expect`; apply the lifecycle
    change it made (`lifecycle`) in the same revision; recompute the deployment's status."""
    old = deployment(store, body["id"])
    if old is None:
        return failure("not_found", f"no deployment {body['id']}")
    index = body["index"]
    if not 0 <= index < len(old["steps"]):
        return failure("invalid", f"deployment {body['id']} has no step {index}")
    step = old["steps"][index]
    expect = body.get("expect")
    if expect is not None and step["status"] != expect:
        return failure("conflict", f"step {index} is {step['status']}, not {expect}")
    fields = body["fields"]
    if fields.get("status", step["status"]) not in STEP_STATUSES:
        return failure("invalid", f"unknown step status {fields.get('status')!r}")
    steps = list(old["steps"])
    steps[index] = {**step, **fields}
    change = body.get("lifecycle")
    if change is not None:
        _apply_lifecycle_change(store, change, body["at"])
    status = _deployment_status(steps)
    record = {**old, "steps": steps, "status": status, "updated_at": body["at"]}
    if status == "done":
        result_index = old.get("result_step")
        if isinstance(result_index, int) and 0 <= result_index < len(steps):
            record["result"] = steps[result_index].get("returns") or {}
        undoes = old.get("undoes")
        if undoes is not None and (target := deployment(store, undoes)) is not None:
            store.put(DEPLOYMENTS, undoes, {**target, "status": "undone", "updated_at": body["at"]})
    return {"ok": True, "deployment": store.put(DEPLOYMENTS, old["id"], record)}


def _apply_lifecycle_change(store: Store, change: dict[str, Any], at: str) -> None:
    node, name = change["node"], change["lifecycle"]
    old = get(store, node, name) or {
        "id": key(node, name),
        "node": node,
        "lifecycle": name,
        "applied": [],
        "data": {},
        "calls": {},
    }
    applied = change["applied"]
    # a provide holds while its state is applied: leaving a state forgets its calls
    calls = {
        xpath: call for xpath, call in old["calls"].items() if xpath.split("/", 1)[0] in applied
    }
    if change.get("call") is not None:
        call = change["call"]
        calls[call["provide"]] = {k: v for k, v in call.items() if k != "provide"}
    record = {**old, "applied": applied, "data": change["data"], "calls": calls, "updated_at": at}
    store.put(LIFECYCLES, record["id"], record)


def update_deployment(store: Store, deployment_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Change a deployment's own fields (resuming resets failed steps to pending)."""
    old = deployment(store, deployment_id)
    if old is None:
        return failure("not_found", f"no deployment {deployment_id}")
    record = {**old, **fields}
    if "steps" in fields:
        record["status"] = _deployment_status(record["steps"])
    return {"ok": True, "deployment": store.put(DEPLOYMENTS, deployment_id, record)}


def delete_deployment(store: Store, deployment_id: str) -> dict[str, Any]:
    old = deployment(store, deployment_id)
    if old is None:
        return failure("not_found", f"no deployment {deployment_id}")
    if old["status"] == "running":
        return failure("conflict", f"deployment {deployment_id} is running")
    store.delete(DEPLOYMENTS, deployment_id)
    return {"ok": True}
