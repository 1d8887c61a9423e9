"""Progress of long work, which lives in the memory of the node doing it (never in the
Raft log): `GET /v1/progress` answers this node's own; `with_progress` fills the
`progress` field of records being made (volumes) or imported (images), asking their owning
node when it is another."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from symphonyd.api.routes import Route, daemon_of, json_response
from symphonyd.errors import SymphonyError
from symphonyd.state import nodes

ASK_TIMEOUT = 1.0  # an owner that does not answer within this shows no progress
IN_PROGRESS = ("creating",)


async def list_progress(request: web.Request) -> web.Response:
    board = daemon_of(request).progress
    return json_response({"node": daemon_of(request).settings.name, "work": board.all()})


async def with_progress(
    request: web.Request,
    table: str,
    records: Iterable[dict[str, Any]],
    *,
    working: tuple[str, ...] = IN_PROGRESS,
    bytes_only: bool = False,
) -> list[dict[str, Any]]:
    """`records` with `progress` set from their owning nodes' memory while their status is
    one of `working`: `{stage, done, total}`, or only the bytes done with `bytes_only`
    (images). None when the owner has no stage yet or cannot say within ASK_TIMEOUT (for
    images, the recorded value is kept then)."""
    daemon = daemon_of(request)
    found = list(records)
    owners = {r["node"] for r in found if r.get("status") in working and r.get("node")}
    work: dict[str, dict[str, Any]] = {}
    if daemon.settings.name in owners:
        owners.discard(daemon.settings.name)
        work.update({item["id"]: item for item in daemon.progress.all() if item["table"] == table})
    if owners:
        for answer in await asyncio.gather(*(_ask(request, owner) for owner in sorted(owners))):
            work.update({item["id"]: item for item in answer if item["table"] == table})
    for record in found:
        if record.get("status") not in working:
            if not bytes_only:
                record["progress"] = None
            continue
        item = work.get(record["id"])
        if bytes_only:
            if item is not None:
                record["progress"] = item["done"]
        else:
            record["progress"] = (
                {k: item[k] for k in ("stage", "done", "total")} if item is not None else None
            )
    return found


async def _ask(request: web.Request, node_name: str) -> list[dict[str, Any]]:
    daemon = daemon_of(request)
    cluster = daemon.require_cluster()
    with cluster.store.lock:
        member = nodes.get(cluster.store, node_name)
    if member is None or daemon.caller is None:
        return []
    client = daemon.caller.client(member, timeout=ASK_TIMEOUT)
    with contextlib.suppress(SymphonyError):
        answer = await client.request("GET", "/v1/progress")
        if isinstance(answer, dict) and isinstance(answer.get("work"), list):
            return list(answer["work"])
    return []


ROUTES = [
    Route(
        "GET",
        "/v1/progress",
        list_progress,
        "This node's long work in progress (stage, bytes done of total), from its memory",
        node=True,
    ),
]
