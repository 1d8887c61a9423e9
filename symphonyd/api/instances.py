"""Instance endpoints: create, list, show, start, stop, restart and remove virtual
machines, and read their console log (from the node that runs them).

What an answer shows: the record, with `status` `unknown` while its node cannot be
reached (never `running` for a node nobody can reach; `last_status` keeps what the
record says) and `orphaned` once its node is no longer a member (`departed.py`), and the
user-data as its size only (it may hold secrets)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import msgspec
from aiohttp import web

from symphonyd import scheduler
from symphonyd.api.bodies import Body, Size, Text, given, read_body
from symphonyd.api.routes import Route, daemon_of, flag, json_response
from symphonyd.compute.service import ComputeService
from symphonyd.departed import departed, orphaned_view
from symphonyd.errors import SymphonyError, Unavailable
from symphonyd.state import nodes
from symphonyd.validation import parse_uint

ON_NODE = ("creating", "stopped", "starting", "running", "stopping", "deleting")
CONSOLE_TIMEOUT = 5.0


def compute_of(request: web.Request) -> ComputeService:
    return daemon_of(request).require_compute()


def _views(request: web.Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    daemon = daemon_of(request)
    cluster = daemon.require_cluster()
    reachable = scheduler.reachable_nodes(cluster, daemon.settings.name)
    views = []
    for record in records:
        view = dict(record)
        user_data = view.pop("user_data", "") or ""
        view["user_data_bytes"] = len(user_data.encode())
        with cluster.store.lock:
            gone = departed(cluster.store, view.get("node"))
        if gone and view["status"] != "deleting":
            orphaned_view(view, "instance")
        elif view.get("node") and view["node"] not in reachable and view["status"] in ON_NODE:
            view["last_status"] = view["status"]
            view["status"] = "unknown"
            view["status_message"] = f"node {view['node']} is unreachable"
        views.append(view)
    return views


Cpus = Annotated[int, msgspec.Meta(ge=1, le=256)]
Names = Annotated[list[str], msgspec.Meta(description="ids, id prefixes or names")]


class NewInstance(Body):
    """An instance to make from an image: placed by the leader unless `node` is given,
    started once made unless `start` is false."""

    name: Annotated[str, msgspec.Meta(description="a hostname (1-63 of a-z, 0-9, '-')")]
    image: Annotated[str, msgspec.Meta(description="image id, name or id prefix")]
    cpus: Cpus | None = None
    memory: Size | None = None
    disk: Size | None = None
    node: str | None = None
    network: Annotated[str, msgspec.Meta(description="user (default) or bridge=NAME")] | None = None
    user_data: Annotated[str, msgspec.Meta(max_length=65536)] | None = None
    network_config: Annotated[str, msgspec.Meta(description="network-config v2 (YAML)")] | None = (
        None
    )
    ssh_keys: list[str] | None = None
    start: bool = True
    volumes: (
        Annotated[
            Names,
            msgspec.Meta(description="data volumes to attach (ready, unused, on one node)"),
        ]
        | None
    ) = None


async def create_instance(request: web.Request) -> web.Response:
    body = await read_body(request, NewInstance)
    record = await compute_of(request).create(given(body))
    return json_response(_views(request, [record])[0], status=202)


async def list_instances(request: web.Request) -> web.Response:
    records = sorted(compute_of(request).records(), key=lambda r: r["name"])
    return json_response({"instances": _views(request, records)})


async def show_instance(request: web.Request) -> web.Response:
    record = compute_of(request).resolve(request.match_info["ref"])
    return json_response(_views(request, [record])[0])


async def start_instance(request: web.Request) -> web.Response:
    record = await compute_of(request).start(request.match_info["ref"])
    return json_response(_views(request, [record])[0], status=202)


class Stop(Body):
    """ACPI power-off, forced after `timeout` seconds (or at once with `force`)."""

    force: bool = False
    timeout: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None


async def stop_instance(request: web.Request) -> web.Response:
    body = await read_body(request, Stop)
    record = await compute_of(request).stop(request.match_info["ref"], body.force, body.timeout)
    return json_response(_views(request, [record])[0], status=202)


async def restart_instance(request: web.Request) -> web.Response:
    record = await compute_of(request).restart(request.match_info["ref"])
    return json_response(_views(request, [record])[0], status=202)


class NewShape(Body):
    cpus: Cpus | None = None
    memory: Size | None = None


async def resize_instance(request: web.Request) -> web.Response:
    body = await read_body(request, NewShape)
    record = await compute_of(request).resize(request.match_info["ref"], body.cpus, body.memory)
    return json_response(_views(request, [record])[0], status=202)


class Attach(Body):
    instance: Text


async def attach_volume(request: web.Request) -> web.Response:
    body = await read_body(request, Attach)
    record = await compute_of(request).attach(request.match_info["ref"], body.instance)
    return json_response(_views(request, [record])[0], status=202)


class Detach(Body):
    instance: Text | None = None  # default: the one it is attached to


async def detach_volume(request: web.Request) -> web.Response:
    body = await read_body(request, Detach)
    record = await compute_of(request).detach(request.match_info["ref"], body.instance)
    return json_response(_views(request, [record])[0], status=202)


class Move(Body):
    node: Annotated[Text, msgspec.Meta(description="default: the best")] | None = None


async def move_instance(request: web.Request) -> web.Response:
    body = await read_body(request, Move)
    record = await compute_of(request).move(request.match_info["ref"], body.node)
    return json_response(_views(request, [record])[0], status=202)


class Evacuate(Body):
    stop_only: bool = False


async def evacuate_node(request: web.Request) -> web.Response:
    body = await read_body(request, Evacuate)
    result = await compute_of(request).evacuate(request.match_info["name"], body.stop_only)
    return json_response(result, status=202)


async def restore_node(request: web.Request) -> web.Response:
    return json_response(await compute_of(request).restore(request.match_info["name"]))


async def delete_instance(request: web.Request) -> web.Response:
    keep = flag(request, "keep_volumes")
    result = await compute_of(request).delete(request.match_info["ref"], keep)
    if "deleted" in result:
        return json_response(result, status=200)
    return json_response(_views(request, [result])[0], status=202)


async def console_log(request: web.Request) -> web.Response:
    """The console text from `offset`, read on the instance's node (asked for it when
    that is another node)."""
    compute = compute_of(request)
    record = compute.resolve(request.match_info["ref"])
    offset = parse_uint(request.query.get("offset", "0"), what="offset")
    daemon = daemon_of(request)
    node = record.get("node")
    if node is None:
        return json_response({"text": "", "offset": 0, "size": 0, "node": None})
    if node == daemon.settings.name:
        return json_response({**compute.console_log(record["id"], offset), "node": node})
    cluster = daemon.require_cluster()
    with cluster.store.lock:
        member = nodes.get(cluster.store, node)
    if member is None or daemon.caller is None:
        raise Unavailable(f"node {node} is not a member any more")
    client = daemon.caller.client(member, timeout=CONSOLE_TIMEOUT)
    try:
        answer = await client.request(
            "GET", f"/v1/instances/{record['id']}/console?offset={offset}"
        )
    except SymphonyError as exc:
        raise Unavailable(f"node {node} does not answer: {exc.message}") from None
    with contextlib.suppress(AttributeError):
        answer.setdefault("node", node)
    return json_response(answer)


ROUTES = [
    Route(
        "POST",
        "/v1/instances",
        create_instance,
        "Create an instance from an image (placed by the leader, made by its node)",
        body=NewInstance,
        responses={202: "recorded, pending", 404: "unknown image", 409: "no node can take it"},
    ),
    Route("GET", "/v1/instances", list_instances, "Instances and their status"),
    Route("GET", "/v1/instances/{ref}", show_instance, "One instance (id, name or id prefix)"),
    Route(
        "POST",
        "/v1/instances/{ref}/start",
        start_instance,
        "Start an instance",
        responses={202: "asked", 409: "failed or being removed"},
    ),
    Route(
        "POST",
        "/v1/instances/{ref}/stop",
        stop_instance,
        "Stop an instance: ACPI power-off, forced after `timeout` seconds (or at once)",
        body=Stop,
        responses={202: "asked", 409: "failed or being removed"},
    ),
    Route(
        "POST",
        "/v1/instances/{ref}/restart",
        restart_instance,
        "Reboot a running instance",
        responses={202: "asked", 409: "not running"},
    ),
    Route(
        "POST",
        "/v1/instances/{ref}/resize",
        resize_instance,
        "New vCPUs and/or memory: live where the driver can, else at the next start",
        body=NewShape,
        responses={202: "asked", 409: "no room on its node, failed or being removed"},
    ),
    Route(
        "POST",
        "/v1/volumes/{ref}/attach",
        attach_volume,
        "Attach a ready data volume to an instance on its node (hot-plugged where the "
        "driver can, else at the next start)",
        body=Attach,
        responses={202: "asked", 409: "in use, not ready, or on another node"},
    ),
    Route(
        "POST",
        "/v1/volumes/{ref}/detach",
        detach_volume,
        "Detach a data volume from its instance",
        body=Detach,
        responses={202: "asked", 409: "not attached"},
    ),
    Route(
        "POST",
        "/v1/instances/{ref}/move",
        move_instance,
        "Move an instance to another node, cold (stopped, volumes copied verified, "
        "started there if it ran)",
        body=Move,
        responses={202: "moving", 409: "cannot move, or no node can take it"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/evacuate",
        evacuate_node,
        "Cordon a node and move its instances to others (or only stop them)",
        body=Evacuate,
        responses={202: "{node, cordoned, moving, stopped, cannot: [{name, reason}]}"},
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/restore",
        restore_node,
        "Uncordon a node (nothing moves back)",
    ),
    Route(
        "DELETE",
        "/v1/instances/{ref}",
        delete_instance,
        "Remove an instance, its domain, seed and root volume",
        query={"keep_volumes": "keep attached data volumes (detached)"},
        responses={200: "removed (it was never made)", 202: "being removed"},
    ),
    Route(
        "GET",
        "/v1/instances/{ref}/console",
        console_log,
        "The instance's serial console log from `offset` (at most 64 KiB per answer)",
        node=True,
        query={"offset": "byte offset to read from (the `offset` of the last answer)"},
    ),
]
