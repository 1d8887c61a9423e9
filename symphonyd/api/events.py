"""`GET /v1/events`: every applied change as server-sent events, resumable.

Each event is `id: <revision>`, `event: <table>.<op>` and `data: <change as JSON>`.
`?since=REV` (or the `Last-Event-ID` header) replays the changes after REV first; if that
part of the history is gone (compacted, or the node restarted from a snapshot) the answer
is 410 and the client must re-read the state it needs. `?table=` filters by table;
changes of the tokens table reach admin tokens only; secret hashes and instance user-data
are left out of records (an instance shows `user_data_bytes`). A comment line is sent
every 15 s so proxies keep the stream open (`?keepalive=1s` for sooner: a client drawing
the progress of long work, which is not in the log, re-reads the record on each).
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from symphonyd.api.routes import Handler, Route, daemon_of, jsonable
from symphonyd.errors import Gone, Invalid
from symphonyd.state.store import Change
from symphonyd.validation import parse_seconds, parse_uint

LONG_POLLS: web.AppKey[set[asyncio.Task[object]]] = web.AppKey("long_polls")
KEEPALIVE = 15.0
MIN_KEEPALIVE = 0.5  # `?keepalive=1s`: a client re-reading progress on each keep-alive


# What of a record never leaves in an event: the hashes of token and node secrets, and an
# instance's cloud-init user-data (it may hold passwords; the instance API shows its size).
HIDDEN = {
    "tokens": ("secret_sha256",),
    "nodes": ("credential_sha256",),
    "instances": ("user_data",),
}


def _visible(table: str, record: dict[str, object]) -> dict[str, object]:
    hidden = HIDDEN.get(table, ())
    visible = {k: v for k, v in record.items() if k not in hidden}
    if table == "instances" and "user_data" in record:
        visible["user_data_bytes"] = len(str(record["user_data"] or "").encode())
    return visible


def _format(change: Change) -> bytes:
    body = change.to_dict()
    if body["record"]:
        body["record"] = _visible(change.table, body["record"])
    data = json.dumps(jsonable(body))
    return f"id: {change.revision}\nevent: {change.table}.{change.op}\ndata: {data}\n\n".encode()


def long_poll(handler: Handler) -> Handler:
    """Mark a handler that may wait for minutes: shutdown cancels it instead of waiting."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        polls = request.app[LONG_POLLS]
        polls.add(task)
        try:
            return await handler(request)
        finally:
            polls.discard(task)

    wrapper.__name__ = handler.__name__
    return wrapper


async def cancel_long_polls(app: web.Application) -> None:
    polls: set[asyncio.Task[object]] = app[LONG_POLLS]
    for task in list(polls):
        task.cancel()


@long_poll
async def events(request: web.Request) -> web.StreamResponse:
    cluster = daemon_of(request).require_cluster()
    store = cluster.store
    since_text = request.query.get("since") or request.headers.get("Last-Event-ID")
    table = request.query.get("table")
    since = parse_uint(since_text, what="since") if since_text is not None else None
    keepalive = KEEPALIVE
    if request.query.get("keepalive") is not None:
        keepalive = max(MIN_KEEPALIVE, parse_seconds(request.query["keepalive"], KEEPALIVE))
    with store.lock:
        last = since if since is not None else store.revision
        if last > store.revision:
            raise Invalid(f"revision {last} is in the future (current: {store.revision})")
        if store.changes_since(last) is None:
            raise Gone(f"changes after revision {last} are no longer kept; re-read the state")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Symphonyd-Revision": str(store.revision),
        }
    )
    hidden = set() if request.get("scope") == "admin" else {"tokens"}  # admins' business
    await response.prepare(request)
    try:
        async for change in cluster.watch(last, keepalive):
            if change is None:
                await response.write(b": keep-alive\n\n")
            elif (table is None or change.table == table) and change.table not in hidden:
                await response.write(_format(change))
    except Gone:
        await response.write(b"event: reset\ndata: {}\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


ROUTES = [
    Route(
        "GET",
        "/v1/events",
        events,
        "Server-sent events of every applied change",
        query={
            "since": "replay changes after this revision first",
            "table": "only changes of this table (kv, nodes, tokens, cluster)",
            "keepalive": "seconds between keep-alive comments (0.5 to 15, default 15)",
        },
        responses={200: "text/event-stream", 410: "history since that revision is gone"},
    ),
]
