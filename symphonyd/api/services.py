"""Service endpoints: enable a service of a registered type on the node that answers,
list, show and disable services. Which types exist is the registry's
(`symphonyd.service_types`), so a new service type needs nothing here."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from symphonyd import scheduler
from symphonyd.api.bodies import Body, read_body
from symphonyd.api.routes import Route, daemon_of, json_response
from symphonyd.departed import departed
from symphonyd.errors import Forbidden
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.service_types import SERVICE_TYPES
from symphonyd.state import lookup, services

TYPES = [t.name for t in SERVICE_TYPES]
DRIVERS = sorted({d for t in SERVICE_TYPES for d in t.drivers})


class NewService(Body):
    """A service to enable on this node (the registry checks type, driver and options)."""

    type: Annotated[str, msgspec.Meta(extra_json_schema={"enum": TYPES})] | None = None
    driver: Annotated[str, msgspec.Meta(extra_json_schema={"enum": DRIVERS})] | None = None
    pool: str | None = None
    options: dict[str, Any] | None = None


async def create_service(request: web.Request) -> web.Response:
    if not request["local"]:
        raise Forbidden("a service is enabled on a node through its local control socket")
    body = await read_body(request, NewService)
    record = await daemon_of(request).enable_service(
        body.type, body.driver, body.pool, body.options
    )
    return json_response(record, status=201)


def _with_reachability(request: web.Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A service on a node this node has no Raft connection to shows as unhealthy, whatever
    its last report said (a dead node cannot report)."""
    daemon = daemon_of(request)
    cluster = daemon.require_cluster()
    reachable = scheduler.reachable_nodes(cluster, daemon.settings.name)
    for record in records:
        with cluster.store.lock:
            gone = departed(cluster.store, record["node"])
        if gone:
            record["health"] = {
                **(record.get("health") or {}),
                "ok": False,
                "message": f"orphaned: node {record['node']} is no longer a member; removed "
                "once its volumes and instances are (`volume rm`, `instance rm`)",
            }
        elif record["node"] not in reachable:
            record["health"] = {
                **(record.get("health") or {}),
                "ok": False,
                "message": f"node {record['node']} is unreachable",
            }
    return records


async def list_services(request: web.Request) -> web.Response:
    store = daemon_of(request).require_cluster().store
    with store.lock:
        records = [dict(s) for s in services.all_services(store)]
    return json_response({"services": _with_reachability(request, records)})


def _service(request: web.Request) -> dict[str, object]:
    store = daemon_of(request).require_cluster().store
    ref = request.match_info["ref"]
    with store.lock:
        found = lookup.matches(services.all_services(store), ref, key=None)
        return dict(lookup.resolve_one(found, ref, "service"))


async def show_service(request: web.Request) -> web.Response:
    return json_response(_with_reachability(request, [_service(request)])[0])


async def delete_service(request: web.Request) -> web.Response:
    service = _service(request)
    await (
        daemon_of(request)
        .require_cluster()
        .propose_ok(Entry(EntryType.SERVICE_DELETE, {"id": service["id"]}))
    )
    return json_response({"deleted": service["id"]})


ROUTES = [
    Route(
        "POST",
        "/v1/services",
        create_service,
        "Enable a cloud service on this node (control socket only)",
        auth="local",
        body=NewService,
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
]
