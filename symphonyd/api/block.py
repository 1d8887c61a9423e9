"""Block endpoints: services (enabled on the node that answers) and volumes."""

from __future__ import annotations

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, json_response, read_json
from symphonyd.block.agent import BlockService
from symphonyd.errors import Forbidden, Invalid, NotFound
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.state import services


def block_of(request: web.Request) -> BlockService:
    return daemon_of(request).require_block()


async def create_service(request: web.Request) -> web.Response:
    if not request["local"]:
        raise Forbidden("a service is enabled on a node through its local control socket")
    body = await read_json(request)
    unknown = sorted(set(body) - {"type", "driver", "pool"})
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(unknown)}")
    record = await block_of(request).enable(
        str(body.get("type", "block")),
        str(body.get("driver", "file")),
        str(body.get("pool", "default")),
    )
    return json_response(record, status=201)


async def list_services(request: web.Request) -> web.Response:
    store = daemon_of(request).require_cluster().store
    with store.lock:
        return json_response({"services": [dict(s) for s in services.all_services(store)]})


def _service(request: web.Request) -> dict[str, object]:
    store = daemon_of(request).require_cluster().store
    ref = request.match_info["ref"]
    with store.lock:
        found = [
            dict(s)
            for s in services.all_services(store)
            if s["id"] == ref or (len(ref) >= 4 and s["id"].startswith(ref))
        ]
    if len(found) != 1:
        raise NotFound(f"no service {ref!r}")
    return found[0]


async def show_service(request: web.Request) -> web.Response:
    return json_response(_service(request))


async def delete_service(request: web.Request) -> web.Response:
    service = _service(request)
    await (
        daemon_of(request)
        .require_cluster()
        .propose_ok(Entry(EntryType.SERVICE_DELETE, {"id": service["id"]}))
    )
    return json_response({"deleted": service["id"]})


async def create_volume(request: web.Request) -> web.Response:
    body = await read_json(request)
    unknown = sorted(set(body) - {"name", "size", "image", "node", "pool"})
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(unknown)}")
    for key in ("image", "node", "pool"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Invalid(f"'{key}' must be text")
    record = await block_of(request).create(
        body.get("name"),
        body.get("size"),
        body.get("image"),
        body.get("node"),
        body.get("pool"),
    )
    return json_response(record, status=202)


async def list_volumes(request: web.Request) -> web.Response:
    return json_response({"volumes": block_of(request).records()})


async def show_volume(request: web.Request) -> web.Response:
    return json_response(block_of(request).resolve(request.match_info["ref"]))


async def delete_volume(request: web.Request) -> web.Response:
    return json_response(await block_of(request).delete(request.match_info["ref"]), status=202)


async def resize_volume(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(
        await block_of(request).resize(request.match_info["ref"], body.get("size")), status=202
    )


async def snapshot_volume(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise Invalid("'name' must be text")
    return json_response(
        await block_of(request).snapshot(request.match_info["ref"], name), status=202
    )


SIZE = {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]}

ROUTES = [
    Route(
        "POST",
        "/v1/services",
        create_service,
        "Enable a cloud service on this node (control socket only)",
        auth="local",
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "enum": ["block"]},
                "driver": {"type": "string", "enum": ["file"]},
                "pool": {"type": "string"},
            },
        },
        responses={201: "enabled", 409: "already enabled"},
    ),
    Route("GET", "/v1/services", list_services, "Services with health and capacity"),
    Route("GET", "/v1/services/{ref}", show_service, "One service (id or id prefix)"),
    Route(
        "DELETE",
        "/v1/services/{ref}",
        delete_service,
        "Disable a service without volumes",
        responses={409: "still has volumes"},
    ),
    Route(
        "POST",
        "/v1/volumes",
        create_volume,
        "Create a volume (placed by the scheduler unless node is given); 202, then it "
        "becomes ready or failed",
        body={
            "type": "object",
            "required": ["name", "size"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "size": SIZE,
                "image": {"type": "string"},
                "node": {"type": "string"},
                "pool": {"type": "string"},
            },
        },
        responses={
            202: "pending",
            400: "bad input",
            404: "no such node or image",
            409: "no room, name taken",
        },
    ),
    Route("GET", "/v1/volumes", list_volumes, "All volumes"),
    Route("GET", "/v1/volumes/{ref}", show_volume, "One volume by id, id prefix or name"),
    Route("DELETE", "/v1/volumes/{ref}", delete_volume, "Delete a volume (its node removes it)"),
    Route(
        "POST",
        "/v1/volumes/{ref}/resize",
        resize_volume,
        "Grow a volume",
        body={"type": "object", "required": ["size"], "properties": {"size": SIZE}},
    ),
    Route(
        "POST",
        "/v1/volumes/{ref}/snapshot",
        snapshot_volume,
        "Snapshot a volume",
        body={"type": "object", "properties": {"name": {"type": "string"}}},
    ),
]
