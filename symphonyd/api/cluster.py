"""Cluster endpoints: health, status, init, join, admitting members, leaving, tokens."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from symphonyd.api.bodies import Body, MemberBody, NodeName, Port, given, read_body
from symphonyd.api.routes import Route, daemon_of, json_response, node_call
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


Duration = Annotated[str, msgspec.Meta(description="e.g. 90s, 15m, 3h, 7d (at most 3650d)")]


class NewCluster(Body):
    token_expires: (
        Annotated[Duration, msgspec.Meta(description="lifetime of the first admin token")] | None
    ) = None


async def init(request: web.Request) -> web.Response:
    body = await read_body(request, NewCluster)
    expires = body.token_expires
    expires_in = parse_duration(expires).total_seconds() if expires is not None else None
    return json_response(await daemon_of(request).membership.init(expires_in), status=201)


class JoinToken(Body):
    token: Annotated[str, msgspec.Meta(min_length=1, description="the join token's text")]


async def join(request: web.Request) -> web.Response:
    body = await read_body(request, JoinToken)
    return json_response(await daemon_of(request).membership.join(body.token), status=201)


class Member(MemberBody):
    """A joining node: name, address and ports, version, schema level and the SHA-256 of
    its node credential (absent from nodes before node credentials)."""

    name: NodeName
    address: Annotated[str, msgspec.Meta(pattern="^\\S+$")]
    api_port: Port
    raft_port: Port
    version: str | None = None
    schema: Annotated[int, msgspec.Meta(ge=1)] = 1
    credential_sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None = None

    def __post_init__(self) -> None:
        version = self.version
        if version is not None and not (0 < len(version) <= 64 and version.isprintable()):
            raise ValueError("node version must be printable text of at most 64 characters")

    def record(self) -> dict[str, Any]:
        """The node's row as `nodes` keeps it (before its status)."""
        row = msgspec.structs.asdict(self)
        if not row["credential_sha256"]:
            del row["credential_sha256"]
        return {**row, "raft_addr": f"{self.address}:{self.raft_port}"}


class Admission(MemberBody):
    """A joining node's request to be admitted, with its join token."""

    token_id: str
    secret: str
    node: Member


async def admit(request: web.Request) -> web.Response:
    body = await read_body(request, Admission)
    membership = daemon_of(request).membership
    reply = await membership.admissions.admit(body.token_id, body.secret, body.node.record())
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


class SettingValue(Body):
    value: Annotated[int | float | str, msgspec.Meta(description="a number, or text holding one")]


async def set_config(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    body = await read_body(request, SettingValue)
    if key not in cluster_table.SETTINGS:
        known = ", ".join(sorted(cluster_table.SETTINGS))
        raise NotFound(f"unknown setting {key!r} (known: {known})")
    value = setting_value(key, body.value)
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
    return json_response(await daemon_of(request).membership.admissions.activate(name))


async def rotate_secret(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).secret_roll.rotate())


Step = Literal["accept", "switch", "retire"]


class SecretStep(MemberBody):
    step: Step
    secret: str


async def secret_step(request: web.Request) -> web.Response:
    if not node_call(request):
        raise Forbidden("only the members' daemons take part in a rotation")
    body = await read_body(request, SecretStep)
    return json_response(daemon_of(request).secret_roll.step(body.step, given(body)))


async def rotate_certificate(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).certificate_roll.rotate())


class CertificateStep(MemberBody):
    step: Step
    certificate: str
    key: str | None = None  # the new key, sent with `accept`


async def certificate_step(request: web.Request) -> web.Response:
    if not node_call(request):
        raise Forbidden("only the members' daemons take part in a rotation")
    body = await read_body(request, CertificateStep)
    return json_response(daemon_of(request).certificate_roll.step(body.step, given(body)))


async def leave(request: web.Request) -> web.Response:
    return json_response(await daemon_of(request).membership.leave())


class NewToken(Body):
    """A join token (single use, expiring: 3h unless `expires` says otherwise) or an API
    token (kind admin, with the rights of `scope`)."""

    kind: Literal["join", "admin"] = "join"
    expires: Duration | None = None  # a join token always expires: 3h unless given
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""
    scope: (
        Annotated[
            Literal["reader", "operator", "admin"],
            msgspec.Meta(description="an API token's (kind admin) rights; default admin"),
        ]
        | None
    ) = None


async def create_token(request: web.Request) -> web.Response:
    body = await read_body(request, NewToken)
    if body.scope is not None and body.kind != "admin":
        raise Invalid(f"'scope' is for API tokens (kind admin): one of {', '.join(SCOPES)}")
    expires = body.expires
    if expires is None and body.kind == "join":
        expires = "3h"
    expires_in = parse_duration(expires).total_seconds() if expires is not None else None
    result = await daemon_of(request).membership.create_token(
        body.kind, expires_in, body.description, body.scope or "admin"
    )
    return json_response(result, status=201)


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
        node=True,  # a follower asks the leader which members it reaches (placement)
        uninitialised=True,
    ),
    Route(
        "POST",
        "/v1/cluster/init",
        init,
        "Bootstrap a new one-node cluster on this node; returns the admin token (shown once)",
        auth="local",
        uninitialised=True,
        body=NewCluster,
        responses={201: "cluster created", 409: "already a member"},
    ),
    Route(
        "POST",
        "/v1/cluster/join",
        join,
        "Make this node join a cluster with a join token",
        auth="local",
        uninitialised=True,
        body=JoinToken,
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
        body=Admission,
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
        body=SettingValue,
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
        body=SecretStep,
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
        body=CertificateStep,
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
        body=NewToken,
        responses={201: "token created (its text is shown only here)"},
    ),
]
