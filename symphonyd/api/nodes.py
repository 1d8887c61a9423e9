"""Node endpoints: list, show and remove members."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, flag, json_response, node_call
from symphonyd.errors import NotFound


def _members(request: web.Request) -> list[dict[str, Any]]:
    return list(daemon_of(request).status()["members"])


def _find(request: web.Request, name: str) -> dict[str, Any]:
    for member in _members(request):
        if member["name"] == name:
            return member
    raise NotFound(f"no node named {name!r}")


async def list_nodes(request: web.Request) -> web.Response:
    return json_response({"nodes": _members(request)})


async def show_node(request: web.Request) -> web.Response:
    return json_response(_find(request, request.match_info["name"]))


async def remove_node(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    leaving = flag(request, "leaving") and node_call(request, name)
    result = await daemon_of(request).membership.remove_node(
        name, force=flag(request, "force"), leaving=leaving
    )
    return json_response(result)


ROUTES = [
    Route("GET", "/v1/nodes", list_nodes, "Members with role, health and status"),
    Route("GET", "/v1/nodes/{name}", show_node, "One member", responses={404: "no such node"}),
    Route(
        "DELETE",
        "/v1/nodes/{name}",
        remove_node,
        "Remove a (dead) member",
        node=True,
        scope="admin",
        query={"force": "remove even if the node is reachable"},
        responses={200: "removed", 404: "no such node", 409: "node reachable or self"},
    ),
]
