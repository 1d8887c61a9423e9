"""The KV API, compatible with Consul's `/v1/kv` so Consul clients and scripts keep working.

Supported as Consul does: `GET` with `recurse`, `keys`, `separator`, `raw`, blocking
`index` + `wait`, `consistent`/`stale`; `PUT` (raw body) with `cas` and `flags`;
`DELETE` with `recurse` and `cas`. Responses: a JSON list of `{LockIndex, Key, Flags, Value
(base64), CreateIndex, ModifyIndex}`, `true`/`false` for writes, 404 for a missing key,
and `X-Consul-Index` on every read. ModifyIndex is the record's mod_revision.
Not supported (400 with a clear message): sessions (`acquire`, `release`).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from aiohttp import web

from symphonyd.api.events import long_poll
from symphonyd.api.routes import Route, daemon_of, flag, json_response
from symphonyd.errors import Invalid, TooLarge
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.state import kv
from symphonyd.validation import parse_seconds, parse_uint

MAX_VALUE = 512 * 1024
MAX_KEY = 1024
MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0


def check_key(key: str, *, allow_empty: bool) -> str:
    if not key and not allow_empty:
        raise Invalid("a key is required: /v1/kv/<key>")
    if len(key.encode()) > MAX_KEY:
        raise Invalid(f"key is longer than {MAX_KEY} bytes")
    if key.startswith("/"):
        raise Invalid("key must not start with '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise Invalid("key must not contain control characters")
    return key


def _uint(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    return None if text is None else parse_uint(text, what=name)


def _wait(request: web.Request) -> float:
    text = request.query.get("wait")
    return DEFAULT_WAIT if text is None else parse_seconds(text, MAX_WAIT)


def consul_entry(record: dict[str, Any]) -> dict[str, Any]:
    value = record["value"]
    return {
        "LockIndex": record.get("lock_index", 0),
        "Key": record["key"],
        "Flags": record.get("flags", 0),
        "Value": base64.b64encode(value).decode() if value else None,
        "CreateIndex": record["create_revision"],
        "ModifyIndex": record["mod_revision"],
    }


def _headers(request: web.Request, index: int) -> dict[str, str]:
    status = daemon_of(request).status()
    return {
        "X-Consul-Index": str(max(index, 1)),
        "X-Consul-KnownLeader": "true" if status.get("has_quorum") else "false",
        "X-Consul-LastContact": "0",
    }


@long_poll
async def get_key(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    cluster = daemon.require_cluster()
    key = check_key(request.match_info["key"], allow_empty=True)
    recurse = flag(request, "recurse") or flag(request, "keys")
    if not key and not recurse:
        raise Invalid("a key is required unless ?recurse or ?keys is given")
    index = _uint(request, "index")
    wait = _wait(request)
    if flag(request, "consistent"):
        await cluster.barrier()
    store = cluster.store
    if index:
        deadline = time.monotonic() + wait
        while True:
            with store.lock:
                current = kv.index_of(store, key, recurse)
                seen = store.revision  # read together: a change after this wakes us
            remaining = deadline - time.monotonic()
            if current > index or remaining <= 0:
                break
            await cluster.wait_for_revision(seen, remaining)
    with store.lock:
        current = kv.index_of(store, key, recurse)
        if flag(request, "keys"):
            found: Any = kv.keys(store, key, request.query.get("separator") or None)
        elif recurse:
            found = [consul_entry(r) for r in kv.list_prefix(store, key)]
        else:
            record = kv.get(store, key)
            found = [consul_entry(record)] if record else []
            raw_value = record["value"] if record else b""
    headers = _headers(request, current)
    if not found:
        return web.Response(status=404, headers=headers)
    if flag(request, "raw") and not recurse:
        return web.Response(
            body=raw_value, headers=headers, content_type="application/octet-stream"
        )
    return json_response(found, headers=headers)


async def put_key(request: web.Request) -> web.Response:
    cluster = daemon_of(request).require_cluster()
    key = check_key(request.match_info["key"], allow_empty=False)
    for unsupported in ("acquire", "release"):
        if unsupported in request.query:
            raise Invalid(f"'{unsupported}' (Consul sessions) is not supported by symphonyd")
    flags = _uint(request, "flags") or 0
    cas = _uint(request, "cas")
    if request.content_length is not None and request.content_length > MAX_VALUE:
        raise TooLarge(f"value exceeds the {MAX_VALUE} byte limit")
    value = await request.read()
    if len(value) > MAX_VALUE:
        raise TooLarge(f"value exceeds the {MAX_VALUE} byte limit")
    body = {"key": key, "value": value, "flags": flags, "cas": cas}
    result = await cluster.propose(Entry(EntryType.KV_PUT, body))
    return json_response(bool(result.get("ok")))


async def delete_key(request: web.Request) -> web.Response:
    cluster = daemon_of(request).require_cluster()
    recurse = flag(request, "recurse")
    key = check_key(request.match_info["key"], allow_empty=recurse)
    cas = _uint(request, "cas")
    if cas is not None and recurse:
        raise Invalid("'cas' cannot be combined with 'recurse'")
    result = await cluster.propose(
        Entry(EntryType.KV_DELETE, {"key": key, "recurse": recurse, "cas": cas})
    )
    return json_response(bool(result.get("ok")))


_READ_QUERY = {
    "recurse": "all keys under the prefix",
    "keys": "only key names",
    "separator": "with keys: fold keys at this separator",
    "raw": "the value alone as the body",
    "index": "block until ModifyIndex exceeds this",
    "wait": "longest block (e.g. 10s, 5m; default 5m, max 10m)",
    "consistent": "read after a Raft barrier",
    "stale": "accepted (reads are local)",
    "token": "API token (also Authorization or X-Consul-Token)",
}

ROUTES = [
    Route(
        "GET",
        "/v1/kv/{key:.*}",
        get_key,
        "Read a key or a prefix (Consul compatible)",
        query=_READ_QUERY,
        responses={200: "Consul KV entries", 404: "no such key"},
    ),
    Route(
        "PUT",
        "/v1/kv/{key:.*}",
        put_key,
        "Write a key; the body is the raw value",
        query={
            "cas": "only if ModifyIndex is this (0: only if absent)",
            "flags": "opaque 64-bit flags",
        },
        raw_body=True,
        responses={200: "true or false", 413: "value over 512 KiB"},
    ),
    Route(
        "DELETE",
        "/v1/kv/{key:.*}",
        delete_key,
        "Delete a key or a prefix",
        query={
            "recurse": "delete everything under the prefix",
            "cas": "only if ModifyIndex is this",
        },
        responses={200: "true or false"},
    ),
]
