"""Lifecycle endpoints (Armonic's agent API, on every node, for every node) and
deployments.

Descriptions of a lifecycle come from the answering node's modules; where it stands on a
node comes from the replicated store. Every change is a deployment record (a goto or a
call is a small one) that the nodes' agents carry out; a request answers with it at once
(202), or with the plan alone when `plan` is true. Secrets are never answered: sealed
values show as a mask.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, json_response, read_json
from symphonyd.errors import Invalid, NotFound
from symphonyd.lifecycle.agent import LifecycleService
from symphonyd.lifecycle.planner import Plan
from symphonyd.lifecycle.variables import MASK
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import is_sealed
from symphonyd.state import lifecycles


async def service_of(request: web.Request) -> LifecycleService:
    service = daemon_of(request).require_lifecycles()
    await service.wait_ready()
    return service


def masked(value: Any) -> Any:
    if is_sealed(value):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def describe_plan(plan: Plan) -> dict[str, Any]:
    secret = {q.id for q in plan.questions.values() if q.secret}
    steps = []
    for step in plan.steps:
        where = f"/{step.node}/{step.lifecycle}/{step.state}/{step.provide}"
        values = {
            name: MASK if f"{where}/{name}" in secret and value is not None else value
            for name, value in step.values.items()
        }
        steps.append(
            {
                "index": step.index,
                "node": step.node,
                "action": step.action,
                "xpath": step.xpath,
                "values": values,
                "inputs": [i.describe() for i in step.inputs],
                "after": step.after,
                "why": step.why,
            }
        )
    return {
        "target": plan.target,
        "node": plan.node,
        "ready": plan.ready,
        "problems": plan.problems,
        "questions": [q.describe() for q in plan.questions.values()],
        "missing": [q.id for q in plan.missing],
        "steps": steps,
        "reused": plan.reused,
        "unused_answers": plan.unused,
    }


def _options(body: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(unknown)}")
    answers = body.get("answers", body.get("values", {}))
    if not isinstance(answers, dict):
        raise Invalid("'answers' must be an object: question id (or its tail) -> value")
    for name in ("yes", "simulate", "plan"):
        if not isinstance(body.get(name, False), bool):
            raise Invalid(f"'{name}' must be true or false")
    for name in ("xpath", "node", "state"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise Invalid(f"'{name}' must be text")
    return {**body, "answers": answers}


async def _start(
    service: LifecycleService, kind: str, plan: Plan, options: dict[str, Any]
) -> web.Response:
    if options.get("plan"):
        return json_response(describe_plan(plan))
    record = await service.create(kind, plan, simulate=options.get("simulate", False))
    return json_response(masked(record), status=202)


# -- per node -----------------------------------------------------------------------------


async def list_node_lifecycles(request: web.Request) -> web.Response:
    service = await service_of(request)
    node = request.match_info["name"]
    service.require_node(node)
    store = service.cluster.store
    with store.lock:
        catalog = dict(lifecycles.catalog(store, node) or {})
        records = {r["lifecycle"]: dict(r) for r in lifecycles.on_node(store, node)}
    items = []
    for name, origin in sorted((catalog.get("lifecycles") or {}).items()):
        record = records.get(name)
        initial = service.catalog.get(name).initial() if name in service.catalog else None
        applied = record["applied"] if record else ([initial] if initial else [])
        items.append(
            {
                "name": name,
                "origin": origin,
                "applied": applied,
                "state": applied[-1] if applied else None,
            }
        )
    return json_response(
        {
            "node": node,
            "lifecycles": items,
            "broken": catalog.get("broken", {}),
            "published": bool(catalog),
        }
    )


async def show_node_lifecycle(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, name = request.match_info["name"], request.match_info["lifecycle"]
    service.require_node(node)
    lifecycle = service.catalog.get(name)
    store = service.cluster.store
    with store.lock:
        record = lifecycles.get(store, node, name)
        loaded = name in ((lifecycles.catalog(store, node) or {}).get("lifecycles") or {})
    if not loaded:
        raise NotFound(f"node {node} has not loaded the lifecycle {name}")
    applied = record["applied"] if record else [lifecycle.initial()]
    return json_response(
        {
            **lifecycle.describe(),
            "node": node,
            "applied": applied,
            "state": applied[-1],
            "calls": masked(record["calls"]) if record else {},
            "data": record["data"] if record else {},
            "dot": lifecycle.to_dot(),
        }
    )


async def goto(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, name = request.match_info["name"], request.match_info["lifecycle"]
    options = _options(await read_json(request), {"state", "values", "answers", "simulate", "plan"})
    if not options.get("state"):
        raise Invalid("'state' is required: the state to go to")
    plan = service.plan("goto", name, node, options["answers"], yes=True, state=options["state"])
    return await _start(service, "goto", plan, options)


async def call(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, xpath = request.match_info["name"], request.match_info["xpath"]
    options = _options(await read_json(request), {"values", "answers", "simulate", "plan"})
    plan = service.plan("call", xpath, node, options["answers"], yes=True)
    return await _start(service, "call", plan, options)


async def validate(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, xpath = request.match_info["name"], request.match_info["xpath"]
    options = _options(await read_json(request), {"values", "answers"})
    plan = service.plan("call", xpath, node, options["answers"], yes=True)
    errors = {q.id: q.error for q in plan.questions.values() if q.error}
    return json_response(
        {"valid": not errors and not plan.problems, "errors": errors, "problems": plan.problems}
    )


# -- deployments ----------------------------------------------------------------------------


async def create_deployment(request: web.Request) -> web.Response:
    service = await service_of(request)
    options = _options(
        await read_json(request), {"xpath", "node", "answers", "yes", "simulate", "plan"}
    )
    if not options.get("xpath"):
        raise Invalid("'xpath' is required, e.g. WebSite//start")
    if options.get("plan"):
        plan = service.plan(
            "deploy",
            options["xpath"],
            options.get("node"),
            options["answers"],
            yes=options.get("yes", False),
        )
        return json_response(describe_plan(plan))
    record = await service.deploy(
        options["xpath"],
        options.get("node"),
        options["answers"],
        yes=options.get("yes", False),
        simulate=options.get("simulate", False),
    )
    return json_response(masked(record), status=202 if record["outcome"] != "unchanged" else 200)


async def list_deployments(request: web.Request) -> web.Response:
    service = await service_of(request)
    with service.cluster.store.lock:
        records = [masked(dict(d)) for d in lifecycles.all_deployments(service.cluster.store)]
    records.sort(key=lambda d: d["created_at"])
    return json_response({"deployments": records})


async def show_deployment(request: web.Request) -> web.Response:
    return json_response(masked((await service_of(request)).find(request.match_info["ref"])))


async def undo_deployment(request: web.Request) -> web.Response:
    record = await (await service_of(request)).undo(request.match_info["ref"])
    return json_response(masked(record), status=202)


async def resume_deployment(request: web.Request) -> web.Response:
    record = await (await service_of(request)).resume(request.match_info["ref"])
    return json_response(masked(record), status=202)


async def delete_deployment(request: web.Request) -> web.Response:
    service = await service_of(request)
    record = service.find(request.match_info["ref"])
    await service.cluster.propose_ok(Entry(EntryType.DEPLOYMENT_DELETE, {"id": record["id"]}))
    return json_response({"deleted": record["id"]})


VALUES = {"type": "object", "description": "question id (or a tail of it) -> value"}
FLAG = {"type": "boolean"}

ROUTES = [
    Route(
        "GET",
        "/v1/nodes/{name}/lifecycles",
        list_node_lifecycles,
        "The lifecycles a node loaded, where each stands, its broken modules",
        responses={404: "no such node"},
    ),
    Route(
        "GET",
        "/v1/nodes/{name}/lifecycles/{lifecycle}",
        show_node_lifecycle,
        "A lifecycle on a node: states, transitions, provides with their requires and "
        "variables, the applied states, the calls that hold (secrets masked), DOT graph",
        responses={404: "no such node or lifecycle"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/lifecycles/{lifecycle}/goto",
        goto,
        "Go to a state (a deployment on that node; suggestions taken for unset values)",
        body={
            "type": "object",
            "required": ["state"],
            "additionalProperties": False,
            "properties": {
                "state": {"type": "string"},
                "values": VALUES,
                "answers": VALUES,
                "simulate": FLAG,
                "plan": FLAG,
            },
        },
        responses={202: "deployment started", 400: "invalid values", 409: "cannot get there"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/lifecycles/provides/{xpath}/call",
        call,
        "Call a provide (xpath url-encoded: WebSite%2F%2Fstart), moving to its state first",
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {"values": VALUES, "answers": VALUES, "simulate": FLAG, "plan": FLAG},
        },
        responses={202: "deployment started", 400: "invalid values or xpath"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/lifecycles/provides/{xpath}/validate",
        validate,
        "Check values for calling a provide: every invalid one named",
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {"values": VALUES, "answers": VALUES},
        },
    ),
    Route(
        "POST",
        "/v1/deployments",
        create_deployment,
        "Plan (plan: true) or start a deployment of a provide; the same one again resumes "
        "a failed one and leaves a finished one alone",
        body={
            "type": "object",
            "required": ["xpath"],
            "additionalProperties": False,
            "properties": {
                "xpath": {"type": "string"},
                "node": {"type": "string"},
                "answers": VALUES,
                "yes": FLAG,
                "simulate": FLAG,
                "plan": FLAG,
            },
        },
        responses={202: "started or resumed", 400: "values missing or invalid"},
    ),
    Route("GET", "/v1/deployments", list_deployments, "Deployments with their steps"),
    Route("GET", "/v1/deployments/{ref}", show_deployment, "One deployment (id or prefix)"),
    Route(
        "POST",
        "/v1/deployments/{ref}/undo",
        undo_deployment,
        "Leave the states a deployment entered, newest first (a new deployment)",
        responses={202: "undo started", 409: "running or already undone"},
    ),
    Route(
        "POST",
        "/v1/deployments/{ref}/resume",
        resume_deployment,
        "Run a failed deployment's failed steps again",
        responses={202: "resumed", 409: "not failed"},
    ),
    Route(
        "DELETE",
        "/v1/deployments/{ref}",
        delete_deployment,
        "Forget a deployment record (not its effects)",
        responses={409: "running"},
    ),
]
