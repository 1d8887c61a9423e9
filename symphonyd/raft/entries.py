"""Typed, versioned log entries.

An entry on the wire and in the journal is msgpack `[type, body_version, body]`:
`type` is a code from `EntryType` that is never reused; `body` is plain data (dicts, lists,
str, int, bytes). Handlers build entries with everything `apply` needs (ids, timestamps,
placements), so applying is deterministic. Never pickle.

Versions, for rolling upgrades (docs/upgrades.md):
* `SCHEMA_VERSION` is the schema level this code speaks; every node records its level.
* `BODY_VERSIONS[type]` is the version of that type's body this code writes (1 unless
  changed). To change a body: bump it, keep the old reader in `fsm.upgrade_body`, never
  change what an old version meant.
* `INTRODUCED[type]` is the schema level that added a type (1 unless listed). A node never
  proposes a type, or a body version, that some member's schema level does not know
  (`check_schema`), and a node that meets one anyway refuses it with a clear message.

Bodies have schemas (`raft/schemas.py`, one msgspec Struct per type and body version):
`encode` checks the body against its schema, so no malformed body is ever proposed;
bodies stay plain dicts and are written as they are. Applying does not check them (older
members have no schema). To change a body: a new optional field with a default is fine;
a new required field or a changed type is a new body version, its old schema kept in
`schemas.EARLIER`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from symphonyd.errors import Conflict, Invalid

SCHEMA_VERSION = 8  # 8: RECORD_CLAIM; 7: an instance placed by its create entry, token scopes


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
    SERVICE_CREATE = 40
    SERVICE_UPDATE = 41
    SERVICE_DELETE = 42
    VOLUME_CREATE = 50
    VOLUME_UPDATE = 51
    VOLUME_DELETE = 52
    VOLUME_PLACE = 53  # the leader's scheduler assigns a pending volume to a node
    PV_CREATE = 60
    PV_UPDATE = 61
    PV_DELETE = 62
    VG_CREATE = 63
    VG_UPDATE = 64
    VG_DELETE = 65
    LIFECYCLE_CATALOG = 70  # a node publishes the lifecycles it loaded
    DEPLOYMENT_CREATE = 71
    DEPLOYMENT_STEP = 72  # a step claimed or finished, with the lifecycle change it made
    DEPLOYMENT_UPDATE = 73  # resume (failed steps back to pending)
    DEPLOYMENT_DELETE = 74
    INSTANCE_CREATE = 80
    INSTANCE_UPDATE = 81
    INSTANCE_DELETE = 82  # the record goes; its root volume is marked for removal
    INSTANCE_PLACE = 83  # the leader places an instance and creates its root volume
    INSTANCE_ATTACH = 84  # a data volume wanted on an instance (checked against other users)
    INSTANCE_DETACH = 85
    INSTANCE_MOVE = 86  # a step of a cold move to another node (state/moves.py)
    # Intent-named entries (schema 8 on): each says what happens, not which fields change.
    RECORD_CLAIM = 90  # a node takes a record placed on it for its work (state/claims.py)


# Types added after schema 1 (schema 2: services and volumes; schema 3: placement by the
# leader's scheduler, LVM physical volumes and volume groups; schema 4: lifecycles and
# deployments; schema 6: instances; schema 8: RECORD_CLAIM), and bodies changed since version 1
# (`BODY_VERSIONS`, `BODY_INTRODUCED`). IMAGE_DELETE refuses an image used by a volume
# since schema 2; a schema-1 node cannot tell, but no volume can exist while one runs
# (VOLUME_CREATE is refused until every member speaks schema 2), so both apply it alike. Likewise
# VOLUME_UPDATE and SERVICE_DELETE refuse what an instance uses since schema 6, and no
# instance exists before every member speaks it.
INTRODUCED: dict[int, int] = {
    EntryType.SERVICE_CREATE: 2,
    EntryType.SERVICE_UPDATE: 2,
    EntryType.SERVICE_DELETE: 2,
    EntryType.VOLUME_CREATE: 2,
    EntryType.VOLUME_UPDATE: 2,
    EntryType.VOLUME_DELETE: 2,
    EntryType.VOLUME_PLACE: 3,
    EntryType.PV_CREATE: 3,
    EntryType.PV_UPDATE: 3,
    EntryType.PV_DELETE: 3,
    EntryType.VG_CREATE: 3,
    EntryType.VG_UPDATE: 3,
    EntryType.VG_DELETE: 3,
    EntryType.LIFECYCLE_CATALOG: 4,
    EntryType.DEPLOYMENT_CREATE: 4,
    EntryType.DEPLOYMENT_STEP: 4,
    EntryType.DEPLOYMENT_UPDATE: 4,
    EntryType.DEPLOYMENT_DELETE: 4,
    EntryType.INSTANCE_CREATE: 6,
    EntryType.INSTANCE_UPDATE: 6,
    EntryType.INSTANCE_DELETE: 6,
    EntryType.INSTANCE_PLACE: 6,
    EntryType.INSTANCE_ATTACH: 6,
    EntryType.INSTANCE_DETACH: 6,
    EntryType.INSTANCE_MOVE: 6,
    EntryType.RECORD_CLAIM: 8,
}
BODY_VERSIONS: dict[int, int] = {
    EntryType.INSTANCE_CREATE: 2,  # 2: `placing` (candidates, root volume id)
}
# The schema level that added a body version past 1 (by type and version).
BODY_INTRODUCED: dict[tuple[int, int], int] = {
    (EntryType.INSTANCE_CREATE, 2): 7,
}


def body_version(entry_type: int) -> int:
    return BODY_VERSIONS.get(entry_type, 1)


def spoken_body_version(entry_type: int, member_schemas: dict[str, int]) -> int:
    """The newest body version of `entry_type` every member can apply (a writer that has
    an older form falls back to it while a rolling upgrade is under way)."""
    lowest = min(member_schemas.values(), default=SCHEMA_VERSION)
    version = body_version(entry_type)
    while version > 1 and BODY_INTRODUCED.get((entry_type, version), 1) > lowest:
        version -= 1
    return version


def required_schema(entry_type: int) -> int:
    """The schema level a node needs to apply entries of this type as this code writes them."""
    return INTRODUCED.get(entry_type, 1)


def check_schema(entry_type: int, member_schemas: dict[str, int]) -> None:
    """Refuse to propose an entry some member could not apply (mid rolling upgrade)."""
    check_level(f"log entry type {entry_type}", required_schema(entry_type), member_schemas)


def check_level(what: str, needed: int, member_schemas: dict[str, int]) -> None:
    """Refuse `what` (an entry type, a setting) unless every member speaks schema `needed`."""
    behind = sorted(name for name, schema in member_schemas.items() if schema < needed)
    if behind:
        raise Conflict(
            f"{what} needs schema {needed} on every member, but "
            f"{', '.join(behind)} run an older symphonyd: finish the rolling upgrade first"
        )


@dataclass(frozen=True)
class Entry:
    type: int
    body: dict[str, Any]
    version: int = 0  # 0: this code's body version of `type`

    def encode(self) -> bytes:
        """The entry as msgpack; Invalid when its body does not fit its schema."""
        version = self.version or body_version(self.type)
        schemas.check(self.type, self.body, version)
        return bytes(msgpack.packb([int(self.type), version, self.body], use_bin_type=True))


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


# At the end: the schemas are built from `EntryType` and `body_version` above.
from symphonyd.raft import schemas  # noqa: E402
