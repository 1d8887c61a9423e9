"""Lifecycle endpoints (Armonic's agent API, on every node, for every node) and
deployments.

Descriptions of a lifecycle come from the answering node's modules; where it stands on a
node comes from the replicated store. Every change is a deployment record (a goto or a
call is a small one) that the nodes' agents carry out; a request answers with it at once
(202), or with the plan alone when `plan` is true. Secrets are never answered: sealed
values show as a mask.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from symphonyd.api.bodies import Body, Values, read_body
from symphonyd.api.routes import Route, daemon_of, json_response
from symphonyd.errors import NotFound
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


class Answers(Body):
    """Answers to a plan's questions (`values` is the older name of `answers`)."""

    values: Values | None = None
    answers: Values | None = None

    def given(self) -> dict[str, Any]:
        if self.answers is not None:
            return self.answers
        return self.values or {}


class Change(Answers):
    simulate: bool = False  # record what would run, run nothing
    plan: bool = False  # answer with the plan alone


class Goto(Change, kw_only=True):  # kw_only is per class: a required field after defaults
    state: Annotated[str, msgspec.Meta(min_length=1, description="the state to go to")]


class NewDeployment(Body):
    xpath: Annotated[str, msgspec.Meta(min_length=1, description="e.g. WebSite//start")]
    node: str | None = None
    answers: Values | None = None
    yes: bool = False  # take the suggestions for unset values
    simulate: bool = False
    plan: bool = False


async def _start(service: LifecycleService, kind: str, plan: Plan, change: Change) -> web.Response:
    if change.plan:
        return json_response(describe_plan(plan))
    record = await service.create(kind, plan, simulate=change.simulate)
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
    body = await read_body(request, Goto)
    plan = service.plan("goto", name, node, body.given(), yes=True, state=body.state)
    return await _start(service, "goto", plan, body)


async def call(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, xpath = request.match_info["name"], request.match_info["xpath"]
    body = await read_body(request, Change)
    plan = service.plan("call", xpath, node, body.given(), yes=True)
    return await _start(service, "call", plan, body)


async def validate(request: web.Request) -> web.Response:
    service = await service_of(request)
    node, xpath = request.match_info["name"], request.match_info["xpath"]
    body = await read_body(request, Answers)
    plan = service.plan("call", xpath, node, body.given(), yes=True)
    errors = {q.id: q.error for q in plan.questions.values() if q.error}
    return json_response(
        {"valid": not errors and not plan.problems, "errors": errors, "problems": plan.problems}
    )


# -- deployments ----------------------------------------------------------------------------


async def create_deployment(request: web.Request) -> web.Response:
    service = await service_of(request)
    body = await read_body(request, NewDeployment)
    answers = body.answers or {}
    if body.plan:
        plan = service.plan("deploy", body.xpath, body.node, answers, yes=body.yes)
        return json_response(describe_plan(plan))
    record = await service.deploy(
        body.xpath, body.node, answers, yes=body.yes, simulate=body.simulate
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
        body=Goto,
        responses={202: "deployment started", 400: "invalid values", 409: "cannot get there"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/lifecycles/provides/{xpath}/call",
        call,
        "Call a provide (xpath url-encoded: WebSite%2F%2Fstart), moving to its state first",
        body=Change,
        responses={202: "deployment started", 400: "invalid values or xpath"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/lifecycles/provides/{xpath}/validate",
        validate,
        "Check values for calling a provide: every invalid one named",
        body=Answers,
    ),
    Route(
        "POST",
        "/v1/deployments",
        create_deployment,
        "Plan (plan: true) or start a deployment of a provide; the same one again resumes "
        "a failed one and leaves a finished one alone",
        body=NewDeployment,
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
