"""Middlewares: errors to JSON, authentication, and the uninitialised-node gate.

A request on the control socket is local root: no token. Over TCP (HTTPS) a request needs
an API token whose scope allows the route (`security.SCOPES`: reader for GETs, operator
for changes, admin for tokens, membership and settings), or a member's node credential on
the routes members call on each other (`Route.node`), as `Authorization: Bearer`,
`X-Consul-Token` or `?token=`; `GET /v1/health` needs none, and a join request carries
its join token.
Every error leaves as `{"error": {"code", "message"}}` with its status; a bug is a logged
500 with no internals in the body.
"""

from __future__ import annotations

import hmac
import logging
import time

from aiohttp import web

from symphonyd import metrics
from symphonyd.api.routes import (
    DAEMON,
    Handler,
    Route,
    json_response,
    needed_scope,
    node_call,
)
from symphonyd.errors import (
    Forbidden,
    NotInitialized,
    SymphonyError,
    TooLarge,
    Unauthorized,
)
from symphonyd.security import (
    JOIN_TOKEN_PREFIX,
    allows,
    now_rfc3339,
    secret_matches,
    shared_node_credential,
    split_api_token,
    split_node_credential,
)
from symphonyd.state import nodes, tokens
from symphonyd.state.store import Store

log = logging.getLogger("symphonyd.api")

ROUTE: web.AppKey[dict[tuple[str, str], Route]] = web.AppKey("routes")


def is_local(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return not isinstance(peer, tuple)


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template, method and status."""
    matched = request.match_info.route
    route = matched.resource.canonical if matched.resource else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics.API_REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.API_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SymphonyError as exc:
        return json_response(exc.to_dict(), status=exc.http_status)
    except web.HTTPRequestEntityTooLarge:
        return json_response(TooLarge("request body is too large").to_dict(), status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no such endpoint: {request.path}"
        return json_response({"error": {"code": code, "message": message}}, status=exc.status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        body = {"error": {"code": "internal", "message": "internal error (see the node's log)"}}
        return json_response(body, status=500)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-Consul-Token") or request.query.get("token")


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    matched = request.match_info.route
    key = (matched.method, matched.resource.canonical) if matched.resource else None
    route = request.app[ROUTE].get(key) if key else None
    local = is_local(request)
    request["local"] = local
    if route is None:
        return await handler(request)  # unknown path: the router answers 404/405
    if route.auth == "local" and not local:
        raise Forbidden("this call is only served on the node's local control socket")
    if not route.uninitialised and daemon.cluster is None:
        raise NotInitialized(
            "this node is not part of a cluster yet: run `symphonyd init` or `symphonyd join TOKEN`"
        )
    request["scope"] = "admin" if local else None
    if not local and route.auth == "token":
        check_token(request)
        check_scope(request, route)
    return await handler(request)


def check_scope(request: web.Request, route: Route) -> None:
    needed = needed_scope(route)
    if node_call(request):
        if not route.node:
            raise Forbidden("a node credential serves only the calls members make to each other")
        return
    scope = request["scope"]
    if not allows(scope, needed):
        raise Forbidden(
            f"this token's scope is {scope}: {route.method} {route.path} needs {needed} "
            "(`symphonyd token create --scope ...`)"
        )


def check_token(request: web.Request) -> None:
    daemon = request.app[DAEMON]
    text = bearer(request)
    if not text:
        raise Unauthorized("an API token is required (Authorization: Bearer TOKEN)")
    if not text.isascii() or not text.isprintable():
        raise Unauthorized("the API token is not valid")
    cluster = daemon.cluster
    node = node_principal(daemon.secret, cluster.store if cluster else None, text)
    if node is not None:
        request["principal"] = node
        return
    if text.startswith(JOIN_TOKEN_PREFIX):
        raise Forbidden("a join token can only be used to join a node (`symphonyd join`)")
    parts = split_api_token(text)
    record = None
    if parts and cluster is not None:
        with cluster.store.lock:
            record = tokens.get(cluster.store, parts[0])
    if record is None or parts is None or not secret_matches(parts[1], record["secret_sha256"]):
        raise Unauthorized("the API token is not valid")
    if record["kind"] != "admin":
        raise Forbidden("a join token can only be used to join a node")
    if record.get("expires_at") and record["expires_at"] <= now_rfc3339():
        raise Unauthorized(f"the API token expired at {record['expires_at']}")
    request["principal"] = f"token:{record['id']}"
    request["scope"] = record.get("scope") or "admin"  # tokens before scopes were admin


def node_principal(cluster_secret: str | None, store: Store | None, text: str) -> str | None:
    """`node:<name>` when `text` is the credential of a node in the nodes table (joining
    ones too: they call `activate`), or `node` for the shared credential while a member
    from before node credentials remains; None when `text` is no node credential at all.
    A node credential that matches no row is refused: its node left or was removed."""
    if store is None:
        return None
    parts = split_node_credential(text)
    if parts is not None:
        with store.lock:
            row = nodes.get(store, parts[0])
        stored = row.get("credential_sha256") if row is not None else None
        if not stored or not secret_matches(parts[1], stored):
            raise Unauthorized("the node credential is not valid (is the node still a member?)")
        return f"node:{parts[0]}"
    if cluster_secret and hmac.compare_digest(text, shared_node_credential(cluster_secret)):
        with store.lock:
            legacy = any(not n.get("credential_sha256") for n in nodes.all_nodes(store))
        if not legacy:
            raise Unauthorized("the shared node credential is retired: every member has its own")
        return "node"
    return None
