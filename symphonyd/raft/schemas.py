"""The schema of every log entry body: one msgspec Struct per entry type (`SCHEMAS`), and
`check`, the one place a body is checked against it, called by `Entry.encode` so that no
malformed body is ever proposed.

A schema says which fields a body carries and their types, as the code that builds the
entry writes them and as its applier (raft/fsm.py) and the state/ function it calls read
them: a field read as `body["x"]` is required; one read as `body.get("x", d)` has the
default `d`. A record handed whole to state/ (a volume, an image, an instance, a node
row, a token, a deployment...) stays `dict[str, Any]`: its shape is state/'s. Small
records an entry owns (a join token being spent, where to place a new instance, a step's
lifecycle change, a move's target and copies) are typed.

What a schema must not do:
* refuse a field it does not know: a member of a newer version may add one, and an
  unknown field is ignored (no `forbid_unknown_fields`);
* change what is written: bodies stay plain dicts, encoded as they are (the Structs are
  never encoded), so journals are byte for byte what they were;
* be applied by the FSM: only proposals are checked. A node replays entries written by
  every earlier version, and a member of an older version has no schema: refusing there
  what an older node applies would make their stores differ. Bodies that do not fit
  their applier are still refused by the FSM as before (`failure("invalid", ...)`).

Changing a schema (docs/upgrades.md): a new optional field with a default is fine (an
older reader ignores it, the applier reads it with `body.get`). A new required field, a
removed field or a changed type is a new body version (`entries.BODY_VERSIONS`): the new
Struct goes in `SCHEMAS`, the one it replaces in `EARLIER` under (type, old version),
since a writer falls back to the old version while a rolling upgrade is under way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from symphonyd.errors import Invalid
from symphonyd.raft.entries import EntryType, body_version

__all__ = ["EARLIER", "SCHEMAS", "EntryBody", "check", "schema_of"]

Record = dict[str, Any]  # a whole record of a state/ table: its shape is state/'s


class EntryBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of a log entry: unknown fields are allowed (newer members add some).
    msgspec applies `kw_only` to a class's own fields only: each subclass repeats it."""


# -- shared shapes ---------------------------------------------------------------------------


class ById(EntryBody, kw_only=True):
    """A body naming one record by id (`*_DELETE`, `TOKEN_DELETE`)."""

    id: str


class Patch(EntryBody, kw_only=True):
    """A generic patch whose applier takes no status condition: fields merged into the
    record. `expect_status` is refused here, as its applier would ignore it."""

    id: str
    fields: dict[str, Any]
    expect_status: None = None


class RecordClaim(EntryBody, kw_only=True):
    """A node takes a record placed on it: its status goes `from_status -> to_status`
    only while it is `from_status` and on that node (state/claims.py)."""

    table: str
    id: str
    node: str
    from_status: str
    to_status: str
    at: str  # RFC 3339, the record's updated_at


class StatusPatch(EntryBody, kw_only=True):
    """A generic patch (`*_UPDATE`): fields merged into the record, only while its status
    is still `expect_status` when one is given (how an agent claims work)."""

    id: str
    fields: dict[str, Any]
    expect_status: str | None = None


class Holder(EntryBody, kw_only=True):
    """A node that holds, or no longer holds, a verified copy of an image."""

    id: str
    node: str
    now: str


# -- cluster, nodes, tokens, KV -----------------------------------------------------------------


class Barrier(EntryBody, kw_only=True):
    """No change: a consistent read waits for it."""


class ClusterInit(EntryBody, kw_only=True):
    cluster: Record


class ClusterConfig(EntryBody, kw_only=True):
    key: str
    value: int | float  # ratios are floats, the other settings integers


class JoinToken(EntryBody, kw_only=True):
    """The join token a joining node spends in its NODE_ADD (both or neither)."""

    id: str
    secret_sha256: str
    now: str


class NodeAdd(EntryBody, kw_only=True):
    node: Record
    token: JoinToken | None = None  # None: added by init or by an operator, not joining


class NodeUpdate(EntryBody, kw_only=True):
    name: str
    fields: dict[str, Any]


class NodeRemove(EntryBody, kw_only=True):
    name: str


class TokenCreate(EntryBody, kw_only=True):
    token: Record


class TokenUse(EntryBody, kw_only=True):
    id: str
    secret_sha256: str
    now: str
    used_by: str


class KvPut(EntryBody, kw_only=True):
    key: str
    value: bytes
    flags: int = 0
    cas: int | None = None  # Consul's check-and-set: 0 only if absent, N only at index N


class KvDelete(EntryBody, kw_only=True):
    key: str
    recurse: bool = False
    cas: int | None = None


# -- images, services, volumes, LVM ------------------------------------------------------------


class ImageCreate(EntryBody, kw_only=True):
    image: Record


class ServiceCreate(EntryBody, kw_only=True):
    service: Record


class VolumeCreate(EntryBody, kw_only=True):
    volume: Record


class VolumePlace(EntryBody, kw_only=True):
    id: str
    node: str
    service_id: str
    pool: str


class PvCreate(EntryBody, kw_only=True):
    pv: Record


class VgCreate(EntryBody, kw_only=True):
    vg: Record


# -- lifecycles and deployments -----------------------------------------------------------------


class LifecycleCatalog(EntryBody, kw_only=True):
    catalog: Record


class DeploymentCreate(EntryBody, kw_only=True):
    deployment: Record


class ProvideCall(EntryBody, kw_only=True):
    """A provide that holds once the step is done (kept in the lifecycle's `calls`)."""

    provide: str  # "State/provide"; the other fields (values, returns, ...) are kept as given


class LifecycleChange(EntryBody, kw_only=True):
    """The change of a lifecycle record a finished step made, applied with the step."""

    node: str
    lifecycle: str
    applied: list[str]
    data: dict[str, Any]
    call: ProvideCall | None = None


class DeploymentStep(EntryBody, kw_only=True):
    id: str
    index: int
    expect: str | None = None  # the status the step must still have
    fields: dict[str, Any]
    lifecycle: LifecycleChange | None = None
    at: str


class DeploymentUpdate(Patch, kw_only=True):
    """A deployment's own fields (resuming puts failed steps back to pending)."""


# -- instances ------------------------------------------------------------------------------


class Placing(EntryBody, kw_only=True):
    """Where a new instance may be placed as its create entry applies (body version 2)."""

    candidates: list[str]
    root_volume_id: str


class InstanceCreate(EntryBody, kw_only=True):
    instance: Record
    placing: Placing | None = None  # None: left for the leader to place


class InstanceCreateV1(EntryBody, kw_only=True):
    """Body version 1, written while a member speaks schema 6: such a member would not
    read `placing` and would leave the instance unplaced, so it must not be there."""

    instance: Record
    placing: None = None


class InstanceDelete(EntryBody, kw_only=True):
    id: str
    keep_volumes: bool
    now: str


class InstancePlace(EntryBody, kw_only=True):
    id: str
    node: str
    service_id: str
    root_volume: Record


class InstanceVolume(EntryBody, kw_only=True):
    """A data volume attached to, or detached from, an instance."""

    id: str
    volume_id: str
    now: str


class MoveTarget(EntryBody, kw_only=True):
    """Where a move takes an instance (kept as its record's `move`)."""

    node: str
    service_id: str
    block_service_id: str
    pool: str
    was_running: bool
    timeout: int | float  # seconds the instance is given to stop


class CopySource(EntryBody, kw_only=True):
    volume_id: str


class VolumeCopy(EntryBody, kw_only=True):
    """A copy of one of the instance's volumes on the target node: a volume record (its
    shape is state/'s) that says which volume it copies."""

    id: str
    name: str
    source: CopySource


class MoveStep(EntryBody, tag_field="step", kw_only=True):
    id: str
    now: str


class MoveBegin(MoveStep, tag="begin", kw_only=True):
    move: MoveTarget


class MoveCopy(MoveStep, tag="copy", kw_only=True):
    volumes: list[VolumeCopy]


class MoveAbort(MoveStep, tag="abort", kw_only=True):
    reason: str


class MoveSwitch(MoveStep, tag="switch", kw_only=True):
    pass


class MoveFinish(MoveStep, tag="finish", kw_only=True):
    pass


InstanceMove = MoveBegin | MoveCopy | MoveAbort | MoveSwitch | MoveFinish


# -- the tables ------------------------------------------------------------------------------

# The schema of each type's body as this code writes it (`entries.body_version`).
SCHEMAS: dict[int, Any] = {
    EntryType.BARRIER: Barrier,
    EntryType.CLUSTER_INIT: ClusterInit,
    EntryType.NODE_ADD: NodeAdd,
    EntryType.NODE_UPDATE: NodeUpdate,
    EntryType.NODE_REMOVE: NodeRemove,
    EntryType.TOKEN_CREATE: TokenCreate,
    EntryType.TOKEN_USE: TokenUse,
    EntryType.TOKEN_DELETE: ById,
    EntryType.CLUSTER_CONFIG: ClusterConfig,
    EntryType.KV_PUT: KvPut,
    EntryType.KV_DELETE: KvDelete,
    EntryType.IMAGE_CREATE: ImageCreate,
    EntryType.IMAGE_UPDATE: StatusPatch,
    EntryType.IMAGE_DELETE: ById,
    EntryType.IMAGE_ADD_HOLDER: Holder,
    EntryType.IMAGE_REMOVE_HOLDER: Holder,
    EntryType.SERVICE_CREATE: ServiceCreate,
    EntryType.SERVICE_UPDATE: Patch,
    EntryType.SERVICE_DELETE: ById,
    EntryType.VOLUME_CREATE: VolumeCreate,
    EntryType.VOLUME_UPDATE: StatusPatch,
    EntryType.VOLUME_DELETE: ById,
    EntryType.VOLUME_PLACE: VolumePlace,
    EntryType.PV_CREATE: PvCreate,
    EntryType.PV_UPDATE: StatusPatch,
    EntryType.PV_DELETE: ById,
    EntryType.VG_CREATE: VgCreate,
    EntryType.VG_UPDATE: StatusPatch,
    EntryType.VG_DELETE: ById,
    EntryType.LIFECYCLE_CATALOG: LifecycleCatalog,
    EntryType.DEPLOYMENT_CREATE: DeploymentCreate,
    EntryType.DEPLOYMENT_STEP: DeploymentStep,
    EntryType.DEPLOYMENT_UPDATE: DeploymentUpdate,
    EntryType.DEPLOYMENT_DELETE: ById,
    EntryType.INSTANCE_CREATE: InstanceCreate,
    EntryType.INSTANCE_UPDATE: StatusPatch,
    EntryType.INSTANCE_DELETE: InstanceDelete,
    EntryType.INSTANCE_PLACE: InstancePlace,
    EntryType.INSTANCE_ATTACH: InstanceVolume,
    EntryType.INSTANCE_DETACH: InstanceVolume,
    EntryType.INSTANCE_MOVE: InstanceMove,
    EntryType.RECORD_CLAIM: RecordClaim,
}
# Earlier body versions a writer still uses while a rolling upgrade is under way
# (`entries.spoken_body_version`), by (type, version).
EARLIER: dict[tuple[int, int], Any] = {
    (EntryType.INSTANCE_CREATE, 1): InstanceCreateV1,
}

# A bytes field takes only bytes (msgspec would otherwise decode base64 text into it).
_AS_GIVEN = (bytes, bytearray, memoryview)


def _name(entry_type: int) -> str:
    try:
        return EntryType(entry_type).name
    except ValueError:
        return f"type {entry_type}"


def schema_of(entry_type: int, version: int = 0) -> Any:
    """The schema of body `version` of `entry_type` (0: the version this code writes);
    Invalid for a type or version this code does not write."""
    current = body_version(entry_type)
    if version in (0, current):
        schema = SCHEMAS.get(entry_type)
    else:
        schema = EARLIER.get((entry_type, version))
    if schema is None:
        raise Invalid(
            f"log entry {_name(entry_type)} body version {version or current} has no schema "
            "in this symphonyd: it cannot be proposed"
        )
    return schema


def check(entry_type: int, body: Any, version: int = 0) -> None:
    """Refuse a body that does not fit its entry type's schema (Invalid naming the type
    and the field, as msgspec's path `$.field`). Cheap: about a microsecond for a KV_PUT."""
    try:
        msgspec.convert(body, schema_of(entry_type, version), strict=True, builtin_types=_AS_GIVEN)
    except msgspec.ValidationError as exc:
        raise Invalid(f"malformed {_name(entry_type)} entry body: {exc}") from None
