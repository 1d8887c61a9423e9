"""Cluster endpoints: health, status, init, join, admitting members, leaving, tokens."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, json_response, node_call, read_json
from symphonyd.errors import Forbidden, Invalid, NotFound
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import SCOPES
from symphonyd.state import cluster as cluster_table
from symphonyd.state import nodes
from symphonyd.validation import parse_duration


async def health(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    status = daemon.status()
    return json_response(
        {
            "status": "ok",
            "node": status["node"],
            "version": status["version"],
            "initialized": status["initialized"],
            "has_quorum": status["has_quorum"],
            "leader": status.get("leader"),
        }
    )


async def cluster_status(request: web.Request) -> web.Response:
    return json_response(daemon_of(request).status())


async def init(request: web.Request) -> web.Response:
    body = await read_json(request, {"token_expires"})
    expires = body.get("token_expires")
    expires_in = parse_duration(expires).total_seconds() if expires is not None else None
    return json_response(await daemon_of(request).membership.init(expires_in), status=201)


async def join(request: web.Request) -> web.Response:
    body = await read_json(request)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise Invalid("'token' (the join token text) is required")
    return json_response(await daemon_of(request).membership.join(token), status=201)


async def admit(request: web.Request) -> web.Response:
    body = await read_json(request)
    token_id, secret = body.get("token_id"), body.get("secret")
    if not isinstance(token_id, str) or not isinstance(secret, str):
        raise Invalid("'token_id' and 'secret' of the join token are required")
    reply = await daemon_of(request).membership.admit(token_id, secret, body.get("node"))
    return json_response(reply, status=201)


async def get_config(request: web.Request) -> web.Response:
    store = daemon_of(request).require_cluster().store
    with store.lock:
        return json_response({"config": cluster_table.config(store)})


def setting_value(key: str, value: object) -> int | float:
    """A value for cluster setting `key`, checked against its range (text is read as a
    number). Ratios (a float default) take any number, the others integers."""
    low, high, default = cluster_table.SETTINGS[key]
    ratio = isinstance(default, float)
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            value = float(text) if ratio else int(text)
    if ratio and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    kind = (float,) if ratio else (int,)
    if not isinstance(value, kind) or isinstance(value, bool) or not low <= value <= high:
        what = "a number" if ratio else "an integer"
        raise Invalid(f"{key} must be {what} from {low:g} to {high:g}")
    return value


async def set_config(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    body = await read_json(request)
    if key not in cluster_table.SETTINGS:
        known = ", ".join(sorted(cluster_table.SETTINGS))
        raise NotFound(f"unknown setting {key!r} (known: {known})")
    value = setting_value(key, body.get("value"))
    cluster = daemon_of(request).require_cluster()
    cluster.require_schema_level(cluster_table.INTRODUCED.get(key, 1), f"setting {key}")
    await cluster.propose_ok(Entry(EntryType.CLUSTER_CONFIG, {"key": key, "value": value}))
    with cluster.store.lock:
        answer: dict[str, Any] = {"config": cluster_table.config(cluster.store)}
        members = len(nodes.all_nodes(cluster.store))
    if key == "images.min_replicas" and value > members:
        count = f"{members} member{'s' if members != 1 else ''}"
        answer["note"] = (
            f"the cluster has {count}: each image is held by every member until more "
            "join (a node holds at most one copy)"
        )
    return json_response(answer)


async def activate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not node_call(request, name):
        raise Forbidden("only a joining node's daemon activates its membership")
    return json_response(await daemon_of(request).membership.activate(name))


async def rotate_secret(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).secret_roll.rotate())


async def secret_step(request: web.Request) -> web.Response:
    if not node_call(request):
        raise Forbidden("only the members' daemons take part in a rotation")
    body = await read_json(request, {"step", "secret"})
    return json_response(daemon_of(request).secret_roll.step(body.get("step", ""), body))


async def rotate_certificate(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).certificate_roll.rotate())


async def certificate_step(request: web.Request) -> web.Response:
    if not node_call(request):
        raise Forbidden("only the members' daemons take part in a rotation")
    body = await read_json(request, {"step", "certificate", "key"})
    return json_response(daemon_of(request).certificate_roll.step(body.get("step", ""), body))


async def leave(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).membership.leave())


async def create_token(request: web.Request) -> web.Response:
    body = await read_json(request, {"kind", "expires", "description", "scope"})
    kind = body.get("kind", "join")
    scope = body.get("scope")
    if scope is not None and (kind != "admin" or scope not in SCOPES):
        raise Invalid(f"'scope' is for API tokens (kind admin): one of {', '.join(SCOPES)}")
    expires = body.get("expires", "3h" if kind == "join" else None)
    expires_in = parse_duration(expires).total_seconds() if expires is not None else None
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 200:
        raise Invalid("'description' must be text of at most 200 characters")
    result = await daemon_of(request).membership.create_token(
        kind, expires_in, description, scope or "admin"
    )
    return json_response(result, status=201)


NODE_SCHEMA = {
    "type": "object",
    "required": ["name", "address", "api_port", "raft_port"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
        "address": {"type": "string", "pattern": "^[^\\s]+$"},
        "api_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "raft_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "version": {"type": "string"},
    },
}

ROUTES = [
    Route(
        "GET",
        "/v1/health",
        health,
        "Liveness and quorum of this node",
        auth="none",
        uninitialised=True,
    ),
    Route(
        "GET",
        "/v1/cluster",
        cluster_status,
        "Cluster id, this node, leader, members with role and health, Raft term and "
        "commit index, quorum",
        uninitialised=True,
    ),
    Route(
        "POST",
        "/v1/cluster/init",
        init,
        "Bootstrap a new one-node cluster on this node; returns the admin token (shown once)",
        auth="local",
        uninitialised=True,
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "token_expires": {
                    "type": "string",
                    "pattern": "^0*[1-9][0-9]{0,2}[smhd]$",
                    "description": "lifetime of the first admin token, e.g. 30d (default: never)",
                },
            },
        },
        responses={201: "cluster created", 409: "already a member"},
    ),
    Route(
        "POST",
        "/v1/cluster/join",
        join,
        "Make this node join a cluster with a join token",
        auth="local",
        uninitialised=True,
        body={"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
        responses={
            201: "joined",
            400: "bad token",
            401: "token not valid",
            409: "token used/expired or name taken",
            503: "no member reachable",
        },
    ),
    Route(
        "POST",
        "/v1/cluster/members",
        admit,
        "Admit a new node (called by the joining node with its join token)",
        auth="join",
        body={
            "type": "object",
            "required": ["token_id", "secret", "node"],
            "properties": {
                "token_id": {"type": "string"},
                "secret": {"type": "string"},
                "node": NODE_SCHEMA,
            },
        },
        responses={201: "admitted", 401: "token not valid", 409: "used/expired/taken"},
    ),
    Route("GET", "/v1/cluster/config", get_config, "Cluster-wide settings and their values"),
    Route(
        "PUT",
        "/v1/cluster/config/{key}",
        set_config,
        "Change a cluster-wide setting (images.min_replicas, images.failed_keep, "
        "deployments.step_patience, compute.cpu_overcommit, compute.memory_overcommit)",
        scope="admin",
        body={
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"oneOf": [{"type": "number"}, {"type": "string"}]}},
        },
        responses={200: "the settings", 400: "bad value", 404: "unknown setting"},
    ),
    Route(
        "POST",
        "/v1/cluster/members/{name}/activate",
        activate,
        "Add an admitted node to the Raft membership once it runs (called by that node)",
        node=True,
        scope="admin",
        responses={200: "a Raft member", 403: "not a member's daemon", 404: "not admitted"},
    ),
    Route(
        "POST",
        "/v1/cluster/rotate-secret",
        rotate_secret,
        "Give the cluster a new secret, rolled out to every member without losing quorum",
        scope="admin",
        responses={
            200: "rotated on every member",
            409: "a member is joining, or a rotation runs",
            503: "a member cannot be reached (nothing changed, or run it again)",
        },
    ),
    Route(
        "POST",
        "/v1/cluster/secret",
        secret_step,
        "One step of a rotation of the cluster secret (called by the rotating member)",
        node=True,
        scope="admin",
        body={
            "type": "object",
            "required": ["step", "secret"],
            "additionalProperties": False,
            "properties": {
                "step": {"type": "string", "enum": ["accept", "switch", "retire"]},
                "secret": {"type": "string"},
            },
        },
        responses={200: "step done", 403: "not a member's daemon"},
    ),
    Route(
        "POST",
        "/v1/cluster/rotate-certificate",
        rotate_certificate,
        "Give the cluster a new certificate, rolled out to every member without a failed call",
        scope="admin",
        responses={
            200: "rotated on every member: the new fingerprint",
            409: "a member is joining, or a rotation runs",
            503: "a member cannot be reached (nothing changed, or run it again)",
        },
    ),
    Route(
        "POST",
        "/v1/cluster/certificate",
        certificate_step,
        "One step of a rotation of the cluster certificate (called by the rotating member)",
        node=True,
        scope="admin",
        body={
            "type": "object",
            "required": ["step", "certificate"],
            "additionalProperties": False,
            "properties": {
                "step": {"type": "string", "enum": ["accept", "switch", "retire"]},
                "certificate": {"type": "string"},
                "key": {"type": "string"},
            },
        },
        responses={200: "step done", 403: "not a member's daemon"},
    ),
    Route(
        "POST",
        "/v1/cluster/leave",
        leave,
        "This node leaves the cluster cleanly",
        auth="local",
        responses={200: "left", 409: "only member"},
    ),
    Route(
        "POST",
        "/v1/tokens",
        create_token,
        "Create a join token (single use, expiring) or an admin token",
        scope="admin",
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "kind": {"type": "string", "enum": ["join", "admin"]},
                "expires": {
                    "type": "string",
                    "pattern": "^0*[1-9][0-9]{0,2}[smhd]$",
                    "description": "e.g. 90s, 15m, 3h, 7d (at most 3650d)",
                },
                "description": {"type": "string", "maxLength": 200},
                "scope": {
                    "type": "string",
                    "enum": ["reader", "operator", "admin"],
                    "description": "an API token's (kind admin) rights; default admin",
                },
            },
        },
        responses={201: "token created (its text is shown only here)"},
    ),
]
