"""Waiting for long work: follow one record over the events stream until it is done.

Long work (a volume being made, an LVM object, an image import, a deployment) is a record
with a status; the API answers at once and the CLI waits here unless `--no-wait`.
`follow_record` re-reads the record (GET) on every change the events stream reports for
it and hands each version to the caller's `done`, which draws progress, raises when the
work failed, and says when it is over. `done` is also asked on each keep-alive (every
15 s), with the record it last saw, so a caller can notice work that stalls.

No change is missed: the stream starts at the record's own `mod_revision`, so whatever
changed after the read that gave the record is replayed. When the stream answers 410 (that
history is gone) it starts again from now and re-reads the record; when it breaks, it
re-reads the record and reconnects from the last revision it saw. Every wait ends by its
timeout.

Must not: poll on a timer while the stream works, or import rich (callers draw).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Generator
from typing import Any

from symphonyd.client import Client
from symphonyd.errors import Gone, NotFound, SymphonyError

STREAM_READ_TIMEOUT = 40.0  # the server sends a keep-alive every 15 s: 40 s of silence is a break
RECONNECT_DELAY = 0.5  # after a broken stream, before re-reading and reconnecting

Record = dict[str, Any]


def follow_record(
    client: Client,
    table: str,
    path: str,
    record: Record,
    done: Callable[[Record], bool],
    *,
    timeout: float,
    expired: Callable[[Record], SymphonyError],
    gone_ok: bool = False,
    refresh: float | None = None,
) -> Record | None:
    """Follow `record` of `table` (re-read at `path`) until `done(record)`; return it.
    Gone (404) while followed: None with `gone_ok`, else NotFound. After `timeout` seconds:
    raises `expired(last record seen)`. With `refresh`, the server keeps the stream alive
    every `refresh` seconds and the record is re-read on each: its `progress` lives in the
    owning node's memory, not in the log, so no change announces it."""
    deadline = time.monotonic() + timeout
    since = record.get("mod_revision")
    changes = _changes(client, table, record["id"], since, deadline, refresh)
    with contextlib.closing(changes):
        while not done(record):
            changed = next(changes, None)
            if changed is None or time.monotonic() >= deadline:
                raise expired(record)
            if changed or refresh is not None:
                try:
                    record = client.request("GET", path)
                except NotFound:
                    if gone_ok:
                        return None
                    raise
    return record


def _changes(
    client: Client,
    table: str,
    key: str,
    since: int | None,
    deadline: float,
    keepalive: float | None = None,
) -> Generator[bool, None, None]:
    """Yield True when the record may have changed (re-read it), False on a keep-alive;
    end at `deadline`. `since` None: follow from now (and yield True once started)."""
    while (remaining := deadline - time.monotonic()) > 0:
        read_timeout = min(STREAM_READ_TIMEOUT, remaining + 1.0)
        try:
            with client.events(
                since=since, table=table, read_timeout=read_timeout, keepalive=keepalive
            ) as stream:
                if since is None:
                    since = stream.revision
                    yield True  # changes from here on are streamed: read what came before
                for event in stream:
                    if event.id is not None and event.id.isdigit():
                        since = int(event.id)
                    if event.event == "reset":  # the history broke off while streaming
                        since = None
                        break
                    if not event.event:
                        yield False
                    elif _key_of(event.data) == key:
                        yield True
                    if time.monotonic() >= deadline:
                        return
                else:
                    raise EOFError  # the server ended the stream: treat it as a break
            continue  # a reset: start again from now, which re-reads
        except Gone:
            if since is not None:
                since = None  # that history is gone: start again from now, which re-reads
                continue
        except (SymphonyError, EOFError):
            pass  # broken, refused or ended: re-read, then reconnect from `since`
        time.sleep(max(0.0, min(RECONNECT_DELAY, deadline - time.monotonic())))
        yield True


def _key_of(data: str) -> str | None:
    try:
        change = json.loads(data)
    except ValueError:
        return None
    return change.get("key") if isinstance(change, dict) else None
