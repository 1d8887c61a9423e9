"""Route tables: each API module lists its routes with the facts the OpenAPI document needs,
so the served API and its description cannot drift apart.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from symphonyd.api.bodies import Body, MemberBody

if TYPE_CHECKING:
    from symphonyd.daemon import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: str = "token"  # "none", "token", "local" (control socket only), "join" (join token)
    # What an API token must be allowed (security.SCOPES): None is "reader" for GET and
    # "operator" for the rest; "admin" for tokens, membership and cluster settings.
    scope: str | None = None
    node: bool = False  # members call it on each other: their node credential may
    uninitialised: bool = False  # served before init/join
    query: dict[str, str] = field(default_factory=dict)  # name -> description
    body: type[Body | MemberBody] | None = None  # the JSON request body (api/bodies.py)
    raw_body: bool = False
    responses: dict[int, str] = field(default_factory=dict)


def needed_scope(route: Route) -> str:
    if route.scope is not None:
        return route.scope
    return "reader" if route.method in ("GET", "HEAD") else "operator"


def node_call(request: web.Request, name: str | None = None) -> bool:
    """Whether a member's daemon makes this request (with its node credential), and when
    `name` is given, that member itself (the shared credential of older members names no
    node: it counts as any)."""
    principal = request.get("principal")
    if principal == "node":
        return True
    if not isinstance(principal, str) or not principal.startswith("node:"):
        return False
    return name is None or principal == f"node:{name}"


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def jsonable(value: Any) -> Any:
    """Plain data -> JSON-safe data (bytes become base64 text)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(jsonable(data)).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def flag(request: web.Request, name: str) -> bool:
    """A query flag: present without value, or 1/true/yes."""
    if name not in request.query:
        return False
    return request.query[name].lower() in ("", "1", "true", "yes")
