"""Token endpoints besides creation (api/cluster.py): list, show and revoke API and join
tokens. Answers never carry a secret or its hash; a revoked token is refused at once on
every node (authentication reads the store)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, json_response
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import now_rfc3339
from symphonyd.state import lookup, tokens

SHOWN = ("id", "kind", "scope", "description", "created_at", "expires_at", "used_at", "used_by")


def view(record: dict[str, Any], now: str) -> dict[str, Any]:
    shown = {key: record.get(key) for key in SHOWN}
    if record.get("kind") == "admin" and not shown["scope"]:
        shown["scope"] = "admin"  # made before scopes existed
    expires = record.get("expires_at")
    shown["expired"] = bool(expires and expires <= now)
    return shown


def _token(request: web.Request) -> dict[str, Any]:
    store = daemon_of(request).require_cluster().store
    ref = request.match_info["ref"]
    with store.lock:
        found = lookup.matches(tokens.all_tokens(store), ref, key=None)
        return dict(lookup.resolve_one(found, ref, "token"))


async def list_tokens(request: web.Request) -> web.Response:
    store = daemon_of(request).require_cluster().store
    now = now_rfc3339()
    with store.lock:
        records = sorted(tokens.all_tokens(store), key=lambda r: (r["created_at"], r["id"]))
        return json_response({"tokens": [view(dict(r), now) for r in records]})


async def show_token(request: web.Request) -> web.Response:
    return json_response(view(_token(request), now_rfc3339()))


async def revoke_token(request: web.Request) -> web.Response:
    record = _token(request)
    cluster = daemon_of(request).require_cluster()
    await cluster.propose_ok(Entry(EntryType.TOKEN_DELETE, {"id": record["id"]}))
    return json_response({"revoked": record["id"], "kind": record["kind"]})


async def whoami(request: web.Request) -> web.Response:
    """The caller: its token (never the secret) and scope, so a page can tell a reader."""
    principal = request.get("principal")
    scope = request.get("scope")
    if request.get("local"):
        return json_response({"kind": "socket", "scope": "admin", "id": None})
    if isinstance(principal, str) and principal.startswith("token:"):
        store = daemon_of(request).require_cluster().store
        with store.lock:
            record = tokens.get(store, principal.removeprefix("token:"))
        if record is not None:
            shown = view(dict(record), now_rfc3339())
            return json_response({**shown, "kind": "token", "token_kind": shown.pop("kind")})
    node = principal.removeprefix("node:") if isinstance(principal, str) else None
    return json_response({"kind": "node", "scope": scope, "id": None, "node": node})


ROUTES = [
    Route(
        "GET",
        "/v1/whoami",
        whoami,
        "The calling token: id, scope, description, expiry (never its secret)",
        node=True,
    ),
    Route(
        "GET",
        "/v1/tokens",
        list_tokens,
        "API and join tokens (never their secrets)",
        scope="admin",
    ),
    Route("GET", "/v1/tokens/{ref}", show_token, "One token (id or id prefix)", scope="admin"),
    Route(
        "DELETE",
        "/v1/tokens/{ref}",
        revoke_token,
        "Revoke a token: refused at once on every node",
        scope="admin",
        responses={200: "revoked", 404: "no such token"},
    ),
]
