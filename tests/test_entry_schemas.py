"""The schemas of log entry bodies (symphonyd/raft/schemas.py), checked by `Entry.encode`.

Every entry type (and every body version a writer may fall back to) has a schema; no
schema refuses a field it does not know; a malformed body is refused with a message that
names the type and the field, and a well-formed one is encoded exactly as before. A real
one-node cluster then goes through volumes, images, tokens, KV and settings: nothing it
proposes is refused, and every entry of its journal fits its schema.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symphonyd.errors import Invalid
from symphonyd.raft import schemas
from symphonyd.raft.entries import Entry, EntryType, body_version, decode
from symphonyd.raft.journal import DurableJournal
from tests.nodes import NodeProcess, NodeSet, free_port, run_json, wait_until

NOW = "2030-01-02T03:04:05.000000Z"
REGULAR = 0  # pysyncobj's command type of a replicated call (the first byte of a command)


def structs_in(schema: Any) -> set[type[msgspec.Struct]]:
    """The Struct types of a schema (a Struct or a union of them) and of its fields."""
    found: set[type[msgspec.Struct]] = set()

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                return
            found.add(info.cls)
            for field in info.fields:
                walk(field.type)
        for attr in ("types", "item_type", "key_type", "value_type"):
            inner = getattr(info, attr, None)
            if isinstance(inner, tuple):
                for each in inner:
                    walk(each)
            elif inner is not None:
                walk(inner)

    walk(msgspec.inspect.type_info(schema))
    return found


# -- every type has a schema --------------------------------------------------------------


@pytest.mark.parametrize("entry_type", list(EntryType), ids=lambda t: t.name)
def test_every_entry_type_and_body_version_has_a_schema(entry_type: EntryType) -> None:
    assert entry_type in schemas.SCHEMAS
    # a writer falls back to any earlier version while a rolling upgrade is under way
    for version in range(1, body_version(entry_type) + 1):
        assert structs_in(schemas.schema_of(entry_type, version))


def test_no_schema_refuses_unknown_fields_or_changes_the_encoding() -> None:
    every = [*schemas.SCHEMAS.values(), *schemas.EARLIER.values()]
    for struct in set().union(*(structs_in(s) for s in every)):
        config = struct.__struct_config__
        assert not config.forbid_unknown_fields, struct
        assert not config.array_like, struct
        assert config.omit_defaults, struct
        # the fields are the body's keys as written (no renames)
        assert all(f.encode_name == f.name for f in msgspec.structs.fields(struct)), struct


def test_a_type_or_version_without_a_schema_cannot_be_proposed() -> None:
    with pytest.raises(Invalid, match="type 99 body version 1 has no schema"):
        Entry(99, {}).encode()
    with pytest.raises(Invalid, match="KV_PUT body version 2 has no schema"):
        Entry(EntryType.KV_PUT, {"key": "k", "value": b""}, version=2).encode()


# -- refused and accepted bodies ------------------------------------------------------------

MALFORMED = [
    (EntryType.KV_PUT, {"value": b"1"}, "missing required field `key`"),
    (EntryType.KV_PUT, {"key": 1, "value": b"1"}, "`$.key`"),
    (EntryType.KV_PUT, {"key": "k", "value": "YWJj"}, "`$.value`"),  # text, even base64
    (EntryType.KV_PUT, {"key": "k", "value": b"1", "flags": True}, "`$.flags`"),
    (EntryType.KV_DELETE, {"key": "k", "recurse": "yes"}, "`$.recurse`"),
    (EntryType.CLUSTER_CONFIG, {"key": "images.min_replicas", "value": "3"}, "`$.value`"),
    (EntryType.NODE_ADD, {"node": "n5"}, "`$.node`"),
    (
        EntryType.NODE_ADD,
        {"node": {"name": "n5"}, "token": {"id": "t", "secret_sha256": "x"}},
        "missing required field `now` - at `$.token`",
    ),
    (EntryType.NODE_UPDATE, {"name": "n1", "fields": ["status"]}, "`$.fields`"),
    (EntryType.TOKEN_USE, {"id": "t", "now": NOW, "used_by": "n5"}, "`secret_sha256`"),
    (EntryType.VOLUME_UPDATE, {"fields": {}}, "missing required field `id`"),
    (EntryType.VOLUME_UPDATE, {"id": "v", "fields": {}, "expect_status": 1}, "`$.expect_status`"),
    # its applier takes no status condition: the claim would be silently ignored
    (EntryType.SERVICE_UPDATE, {"id": "s", "fields": {}, "expect_status": "ready"}, "status"),
    (EntryType.VOLUME_PLACE, {"id": "v", "node": "n1", "service_id": "s"}, "`pool`"),
    (EntryType.IMAGE_ADD_HOLDER, {"id": "i", "node": "n1"}, "`now`"),
    (EntryType.INSTANCE_DELETE, {"id": "i", "keep_volumes": "no", "now": NOW}, "keep_volumes"),
    (EntryType.INSTANCE_CREATE, {"instance": {}, "placing": {"candidates": ["n1"]}}, "root_vol"),
    (EntryType.INSTANCE_MOVE, {"id": "i", "step": "teleport", "now": NOW}, "`$.step`"),
    (EntryType.INSTANCE_MOVE, {"id": "i", "step": "begin", "now": NOW}, "`move`"),
    (
        EntryType.INSTANCE_MOVE,
        {"id": "i", "step": "copy", "now": NOW, "volumes": [{"id": "c", "name": "c"}]},
        "`source` - at `$.volumes[0]`",
    ),
    (
        EntryType.DEPLOYMENT_STEP,
        {
            "id": "d",
            "index": 0,
            "fields": {},
            "at": NOW,
            "lifecycle": {"node": "n1", "lifecycle": "L", "applied": "Installed", "data": {}},
        },
        "`$.lifecycle.applied`",
    ),
    (EntryType.DEPLOYMENT_STEP, {"id": "d", "index": "0", "fields": {}, "at": NOW}, "`$.index`"),
]


@pytest.mark.parametrize(
    ("entry_type", "body", "says"),
    MALFORMED,
    ids=[f"{t.name}-{i}" for i, (t, *_) in enumerate(MALFORMED)],
)
def test_a_malformed_body_cannot_be_proposed(
    entry_type: EntryType, body: dict[str, Any], says: str
) -> None:
    with pytest.raises(Invalid) as refused:
        Entry(entry_type, body).encode()
    message = refused.value.message
    assert message.startswith(f"malformed {entry_type.name} entry body: "), message
    assert says in message, message


def test_body_version_1_of_instance_create_carries_no_placing() -> None:
    # a member of schema 6 would not read it, and would leave the instance unplaced
    placing = {"candidates": ["n1"], "root_volume_id": "r1"}
    body = {"instance": {"id": "i1"}, "placing": placing}
    assert Entry(EntryType.INSTANCE_CREATE, body, version=2).encode()
    assert Entry(EntryType.INSTANCE_CREATE, {"instance": {"id": "i1"}}, version=1).encode()
    with pytest.raises(Invalid, match=r"`\$.placing`"):
        Entry(EntryType.INSTANCE_CREATE, body, version=1).encode()


WELL_FORMED = [
    (EntryType.BARRIER, {}),
    (EntryType.KV_PUT, {"key": "web/a", "value": b"\x00\xff", "flags": 7, "cas": None}),
    (EntryType.KV_PUT, {"key": "web/a", "value": b""}),
    (EntryType.KV_DELETE, {"key": "", "recurse": True, "cas": None}),
    (EntryType.CLUSTER_CONFIG, {"key": "compute.cpu_overcommit", "value": 2.5}),
    (EntryType.NODE_ADD, {"node": {"name": "n1"}, "token": None}),
    (
        EntryType.VOLUME_UPDATE,
        {"id": "v", "fields": {"status": "creating"}, "expect_status": "pending"},
    ),
    (EntryType.SERVICE_UPDATE, {"id": "s", "fields": {"health": None}}),
    (
        EntryType.DEPLOYMENT_STEP,
        {"id": "d", "index": 0, "expect": None, "fields": {}, "lifecycle": None, "at": NOW},
    ),
    (EntryType.INSTANCE_MOVE, {"id": "i", "step": "switch", "now": NOW}),
    (EntryType.INSTANCE_MOVE, {"id": "i", "step": "abort", "now": NOW, "reason": "copy failed"}),
]


@pytest.mark.parametrize(("entry_type", "body"), WELL_FORMED, ids=lambda x: getattr(x, "name", ""))
def test_a_well_formed_body_is_encoded_as_it_always_was(
    entry_type: EntryType, body: dict[str, Any]
) -> None:
    data = Entry(entry_type, body).encode()
    assert data == msgpack.packb(
        [int(entry_type), body_version(entry_type), body], use_bin_type=True
    )
    assert decode(data).body == body


def test_a_field_a_newer_member_adds_is_accepted() -> None:
    body = {"key": "k", "value": b"1", "ttl": 30}
    assert decode(Entry(EntryType.KV_PUT, body).encode()).body == body
    move = {"id": "i", "step": "finish", "now": NOW, "keep_sources": True}
    assert Entry(EntryType.INSTANCE_MOVE, move).encode()


@settings(max_examples=200, deadline=None)
@given(
    key=st.text(max_size=40),
    value=st.binary(max_size=64),
    flags=st.integers(min_value=0, max_value=2**64 - 1),
    cas=st.none() | st.integers(min_value=0, max_value=2**63),
)
def test_kv_put_bodies_round_trip(key: str, value: bytes, flags: int, cas: int | None) -> None:
    body = {"key": key, "value": value, "flags": flags, "cas": cas}
    data = Entry(EntryType.KV_PUT, body).encode()
    assert data == msgpack.packb([20, 1, body], use_bin_type=True)
    again = decode(data)
    schemas.check(again.type, again.body, again.version)
    assert again.body == body


# -- what a real cluster proposes -----------------------------------------------------------


def run_ok(node: NodeProcess, *args: str) -> str:
    result = node.cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def journal_entries(raft_dir: Path) -> list[Entry]:
    """The log entries of a stopped node's journal (its replicated calls; the membership
    and no-op commands of pysyncobj are left out)."""
    journal = DurableJournal(str(raft_dir))
    try:
        commands = [journal[i][0] for i in range(len(journal))]
    finally:
        journal._destroy()
    entries = []
    for command in commands:
        if command[:1] == bytes([REGULAR]):
            _method, args = pickle.loads(command[1:])[:2]  # our own journal: trusted
            entries.append(decode(args[0]))
    return entries


@pytest.mark.cluster
@pytest.mark.slow
def test_every_entry_a_cluster_writes_fits_its_schema(nodeset: NodeSet, tmp_path: Path) -> None:
    (n1,) = nodeset.form(1)
    run_ok(n1, "config", "set", "images.min_replicas", "1")
    assert run_json(n1, "service", "new")["driver"] == "file"
    image_file = tmp_path / "img.raw"
    image_file.write_bytes(b"\x01" * (1 << 20))
    run_json(n1, "image", "new", "d", "base", str(image_file))
    made = run_json(n1, "volume", "create", "data", "--size", "8M", "--image", "base")
    assert made["status"] == "ready"
    assert run_json(n1, "volume", "create", "empty", "--size", "4M")["status"] == "ready"
    assert run_json(n1, "volume", "resize", "empty", "--size", "8M")["status"] == "ready"
    for name in ("data", "empty"):
        run_ok(n1, "volume", "rm", name)
    wait_until(
        lambda: n1.client().request("GET", "/v1/volumes")["volumes"] == [], 30, "volumes gone"
    )
    run_ok(n1, "image", "rm", "base")
    run_ok(n1, "token", "create")
    admin = run_json(n1, "token", "create", "--admin", "--scope", "reader")
    run_ok(n1, "token", "revoke", admin["id"])
    run_ok(n1, "kv", "put", "web/a", "1")
    run_ok(n1, "kv", "put", "web/b", "2", "--cas", "0", "--flags", "42")
    index = n1.client().request("GET", "/v1/kv/web/a")[0]["ModifyIndex"]
    run_ok(n1, "kv", "put", "web/a", "3", "--cas", str(index))
    run_ok(n1, "kv", "delete", "web/a")
    run_ok(n1, "kv", "delete", "web/", "--recurse")
    run_ok(n1, "lifecycle", "goto", "WebServer", "Configured", "--set", f"port={free_port()}")
    run_ok(n1, "lifecycle", "goto", "WebServer", "NotInstalled")
    n1.settled_revision()
    assert "malformed" not in n1.log()
    assert n1.stop() == 0

    entries = journal_entries(n1.data_dir / "raft")
    for entry in entries:
        schemas.check(entry.type, entry.body, entry.version)
    seen = {EntryType(e.type) for e in entries}
    assert {
        EntryType.CLUSTER_INIT,
        EntryType.NODE_ADD,
        EntryType.TOKEN_CREATE,
        EntryType.TOKEN_DELETE,
        EntryType.CLUSTER_CONFIG,
        EntryType.KV_PUT,
        EntryType.KV_DELETE,
        EntryType.IMAGE_CREATE,
        EntryType.IMAGE_UPDATE,
        EntryType.IMAGE_DELETE,
        EntryType.SERVICE_CREATE,
        EntryType.SERVICE_UPDATE,
        EntryType.VOLUME_CREATE,
        EntryType.VOLUME_UPDATE,
        EntryType.VOLUME_PLACE,
        EntryType.VOLUME_DELETE,
        EntryType.RECORD_CLAIM,  # the volume agent's claim, intent-named since schema 8
        EntryType.LIFECYCLE_CATALOG,
        EntryType.DEPLOYMENT_CREATE,
        EntryType.DEPLOYMENT_STEP,
    } <= seen, sorted(t.name for t in seen)
