"""Typed, versioned log entries.

An entry on the wire and in the journal is msgpack `[type, schema_version, body]`:
`type` is a code from `EntryType` that is never reused; `body` is plain data (dicts, lists,
str, int, bytes). Handlers build entries with everything `apply` needs (ids, timestamps,
placements), so applying is deterministic. Never pickle.

To change an entry's body: bump SCHEMA_VERSION, keep the old reader in `fsm.py`
(`upgrade_body`), never change what an old version meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from symphonyd.errors import Invalid

SCHEMA_VERSION = 1


class EntryType(IntEnum):
    BARRIER = 1  # no change; a consistent read waits for it
    CLUSTER_INIT = 2
    NODE_ADD = 3
    NODE_UPDATE = 4
    NODE_REMOVE = 5
    TOKEN_CREATE = 6
    TOKEN_USE = 7
    TOKEN_DELETE = 8
    CLUSTER_CONFIG = 9
    KV_PUT = 20
    KV_DELETE = 21
    IMAGE_CREATE = 30
    IMAGE_UPDATE = 31
    IMAGE_DELETE = 32
    IMAGE_ADD_HOLDER = 33
    IMAGE_REMOVE_HOLDER = 34


@dataclass(frozen=True)
class Entry:
    type: int
    body: dict[str, Any]
    version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return bytes(msgpack.packb([int(self.type), self.version, self.body], use_bin_type=True))


def decode(data: bytes) -> Entry:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise Invalid(f"undecodable log entry: {exc}") from exc
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], int)
        or not isinstance(value[1], int)
        or not isinstance(value[2], dict)
    ):
        raise Invalid("malformed log entry")
    return Entry(type=value[0], version=value[1], body=value[2])
