"""The FSM (symphonyd/raft/fsm.py) and its log entries (symphonyd/raft/entries.py).

Every entry type applied once with a realistic body; snapshot/restore round trips;
refusals (unknown type, newer schema, garbage, malformed body) that change nothing; and
hypothesis-generated KV histories checked for determinism, snapshot transparency and
Consul's check-and-set rules against a small model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symphonyd.errors import Invalid
from symphonyd.raft.entries import SCHEMA_VERSION, Entry, EntryType, body_version, decode
from symphonyd.raft.fsm import FSM, SNAPSHOT_MAGIC
from symphonyd.security import now_rfc3339, sha256_hex
from symphonyd.state.store import Store

NOW = "2030-01-02T03:04:05.000000Z"
LATER = "2030-01-02T04:04:05.000000Z"
SECRET = "join-secret"


def node(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"id-{name}",
        "address": "10.0.0.1",
        "api_port": 8443,
        "raft_port": port,
        "raft_addr": f"10.0.0.1:{port}",
        "status": "active",
        "version": "0.1",
        "created_at": NOW,
    }


def kv_put(key: str, value: bytes, cas: int | None = None, flags: int = 0) -> bytes:
    body: dict[str, Any] = {"key": key, "value": value, "flags": flags}
    if cas is not None:
        body["cas"] = cas
    return Entry(EntryType.KV_PUT, body).encode()


def kv_delete(key: str, cas: int | None = None, recurse: bool = False) -> bytes:
    body: dict[str, Any] = {"key": key, "recurse": recurse}
    if cas is not None:
        body["cas"] = cas
    return Entry(EntryType.KV_DELETE, body).encode()


def unchecked(entry: Entry) -> bytes:
    """The entry as `encode` packs it, without its schema check: what a member of another
    version, or a bug, could have put in the log (`encode` refuses to propose it)."""
    version = entry.version or body_version(entry.type)
    return bytes(msgpack.packb([int(entry.type), version, entry.body], use_bin_type=True))


def state(store: Store) -> dict[str, Any]:
    """Everything a snapshot must carry: revision and every record of every table."""
    return {
        "revision": store.revision,
        "tables": {name: copy.deepcopy(t.records) for name, t in store.tables.items()},
    }


def fresh() -> FSM:
    return FSM(Store())


def apply_all(fsm: FSM, entries: list[bytes]) -> list[dict[str, Any]]:
    return [fsm.apply(e) for e in entries]


def round_trip(fsm: FSM) -> FSM:
    other = fresh()
    other.restore(fsm.snapshot())
    return other


# -- entries -----------------------------------------------------------------------------


def test_an_entry_encodes_to_msgpack_type_version_body() -> None:
    entry = Entry(EntryType.KV_PUT, {"key": "a", "value": b"\x00\xff"})
    data = entry.encode()
    assert msgpack.unpackb(data, raw=False) == [
        20,
        1,  # KV_PUT's body version (not the schema level)
        {"key": "a", "value": b"\x00\xff"},
    ]
    again = decode(data)
    assert again == Entry(type=20, body={"key": "a", "value": b"\x00\xff"}, version=1)
    assert isinstance(again.body["value"], bytes)


def test_entry_type_codes_are_never_reused() -> None:
    # The log on disk depends on these numbers: changing one breaks every old log.
    assert {t.name: int(t) for t in EntryType} == {
        "BARRIER": 1,
        "CLUSTER_INIT": 2,
        "NODE_ADD": 3,
        "NODE_UPDATE": 4,
        "NODE_REMOVE": 5,
        "TOKEN_CREATE": 6,
        "TOKEN_USE": 7,
        "TOKEN_DELETE": 8,
        "CLUSTER_CONFIG": 9,
        "KV_PUT": 20,
        "KV_DELETE": 21,
        "IMAGE_CREATE": 30,
        "IMAGE_UPDATE": 31,
        "IMAGE_DELETE": 32,
        "IMAGE_ADD_HOLDER": 33,
        "IMAGE_REMOVE_HOLDER": 34,
        "SERVICE_CREATE": 40,
        "SERVICE_UPDATE": 41,
        "SERVICE_DELETE": 42,
        "VOLUME_CREATE": 50,
        "VOLUME_UPDATE": 51,
        "VOLUME_DELETE": 52,
        "VOLUME_PLACE": 53,
        "PV_CREATE": 60,
        "PV_UPDATE": 61,
        "PV_DELETE": 62,
        "VG_CREATE": 63,
        "VG_UPDATE": 64,
        "VG_DELETE": 65,
        "LIFECYCLE_CATALOG": 70,
        "DEPLOYMENT_CREATE": 71,
        "DEPLOYMENT_STEP": 72,
        "DEPLOYMENT_UPDATE": 73,
        "DEPLOYMENT_DELETE": 74,
        "INSTANCE_CREATE": 80,
        "INSTANCE_UPDATE": 81,
        "INSTANCE_DELETE": 82,
        "INSTANCE_PLACE": 83,
        "INSTANCE_ATTACH": 84,
        "INSTANCE_DETACH": 85,
        "INSTANCE_MOVE": 86,
        "RECORD_CLAIM": 90,
    }


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x93\x14",  # an array of 3 cut short
        b"\x01\x02",  # extra data after a value
        msgpack.packb({"type": 20}),  # not a list
        msgpack.packb([20, 1]),  # two items
        msgpack.packb([20, 1, {}, 4]),  # four items
        msgpack.packb(["20", 1, {}]),  # type is not an int
        msgpack.packb([20, "1", {}]),  # version is not an int
        msgpack.packb([20, 1, ["key", "a"]]),  # body is not a map
    ],
)
def test_decode_refuses_anything_but_a_well_formed_entry(data: bytes) -> None:
    with pytest.raises(Invalid):
        decode(data)


# -- every entry type --------------------------------------------------------------------


def setup_entries() -> list[bytes]:
    """A cluster with one member, one join token, one admin token and two keys."""
    return [
        Entry(
            EntryType.CLUSTER_INIT,
            {"cluster": {"id": "c1", "created_at": NOW, "fingerprint": "ab" * 32}},
        ).encode(),
        Entry(EntryType.NODE_ADD, {"node": node("n1", 7001)}).encode(),
        Entry(
            EntryType.TOKEN_CREATE,
            {
                "token": {
                    "id": "join1",
                    "kind": "join",
                    "secret_sha256": sha256_hex(SECRET),
                    "created_at": NOW,
                    "expires_at": LATER,
                    "description": "",
                }
            },
        ).encode(),
        Entry(
            EntryType.TOKEN_CREATE,
            {
                "token": {
                    "id": "admin1",
                    "kind": "admin",
                    "secret_sha256": sha256_hex("admin-secret"),
                    "created_at": NOW,
                    "expires_at": None,
                    "description": "created by init",
                }
            },
        ).encode(),
        kv_put("web/a", b"1"),
        kv_put("web/b", b"2", flags=42),
    ]


@pytest.fixture
def cluster_fsm() -> FSM:
    fsm = fresh()
    for result in apply_all(fsm, setup_entries()):
        assert result["ok"] is True, result
    assert fsm.store.revision == 6
    return fsm


def check_barrier(fsm: FSM, before: dict[str, Any]) -> None:
    result = fsm.apply(Entry(EntryType.BARRIER, {}).encode())
    assert result == {"ok": True, "revision": 6}
    assert state(fsm.store) == before


def check_cluster_init(fsm: FSM, before: dict[str, Any]) -> None:
    assert fsm.store.get("cluster", "cluster") == {
        "id": "c1",
        "created_at": NOW,
        "fingerprint": "ab" * 32,
        "create_revision": 1,
        "mod_revision": 1,
    }
    again = Entry(EntryType.CLUSTER_INIT, {"cluster": {"id": "c2"}}).encode()
    result = fsm.apply(again)
    assert result["ok"] is False
    assert result["error"]["code"] == "conflict"
    assert state(fsm.store) == before


def check_node_add(fsm: FSM, before: dict[str, Any]) -> None:
    result = fsm.apply(Entry(EntryType.NODE_ADD, {"node": node("n2", 7002)}).encode())
    assert result["ok"] is True
    assert result["revision"] == 7
    assert result["node"] == {**node("n2", 7002), "create_revision": 7, "mod_revision": 7}
    assert fsm.store.get("nodes", "n2") == result["node"]
    # the same raft address under another name is refused
    clash = Entry(EntryType.NODE_ADD, {"node": node("n3", 7002)}).encode()
    assert fsm.apply(clash)["error"]["code"] == "conflict"
    assert fsm.store.get("nodes", "n3") is None
    assert fsm.store.revision == 7


def check_node_update(fsm: FSM, before: dict[str, Any]) -> None:
    update = {"name": "n1", "fields": {"status": "leaving", "version": "0.2"}}
    result = fsm.apply(Entry(EntryType.NODE_UPDATE, update).encode())
    assert result["ok"] is True
    assert fsm.store.get("nodes", "n1") == {
        **node("n1", 7001),
        "status": "leaving",
        "version": "0.2",
        "create_revision": 2,
        "mod_revision": 7,
    }
    missing = {"name": "ghost", "fields": {"status": "leaving"}}
    assert fsm.apply(Entry(EntryType.NODE_UPDATE, missing).encode())["error"]["code"] == (
        "not_found"
    )
    assert fsm.store.revision == 7


def check_node_remove(fsm: FSM, before: dict[str, Any]) -> None:
    assert fsm.apply(Entry(EntryType.NODE_REMOVE, {"name": "n1"}).encode()) == {
        "ok": True,
        "revision": 7,
    }
    assert fsm.store.get("nodes", "n1") is None
    again = fsm.apply(Entry(EntryType.NODE_REMOVE, {"name": "n1"}).encode())
    assert again["error"]["code"] == "not_found"
    assert fsm.store.revision == 7


def check_token_create(fsm: FSM, before: dict[str, Any]) -> None:
    token = {
        "id": "join2",
        "kind": "join",
        "secret_sha256": sha256_hex("s2"),
        "created_at": NOW,
        "expires_at": None,
        "description": "for n2",
    }
    result = fsm.apply(Entry(EntryType.TOKEN_CREATE, {"token": token}).encode())
    assert result["ok"] is True
    assert fsm.store.get("tokens", "join2") == {**token, "create_revision": 7, "mod_revision": 7}
    dup = {**token, "secret_sha256": sha256_hex("other")}
    assert (
        fsm.apply(Entry(EntryType.TOKEN_CREATE, {"token": dup}).encode())["error"]["code"]
        == "conflict"
    )
    assert fsm.store.get("tokens", "join2")["secret_sha256"] == sha256_hex("s2")


def check_token_use(fsm: FSM, before: dict[str, Any]) -> None:
    use = {"id": "join1", "secret_sha256": sha256_hex(SECRET), "now": NOW, "used_by": "n9"}
    assert fsm.apply(Entry(EntryType.TOKEN_USE, use).encode())["ok"] is True
    record = fsm.store.get("tokens", "join1")
    assert (record["used_at"], record["used_by"], record["mod_revision"]) == (NOW, "n9", 7)
    assert fsm.apply(Entry(EntryType.TOKEN_USE, use).encode())["error"]["code"] == "conflict"
    assert fsm.store.get("tokens", "join1")["used_by"] == "n9"


def check_token_delete(fsm: FSM, before: dict[str, Any]) -> None:
    result = fsm.apply(Entry(EntryType.TOKEN_DELETE, {"id": "admin1"}).encode())
    assert result["ok"] is True
    assert fsm.store.get("tokens", "admin1") is None
    again = fsm.apply(Entry(EntryType.TOKEN_DELETE, {"id": "admin1"}).encode())
    assert again["error"]["code"] == "not_found"
    assert fsm.store.revision == 7


def check_kv_put(fsm: FSM, before: dict[str, Any]) -> None:
    assert fsm.apply(kv_put("web/a", b"\x00new", flags=7)) == {
        "ok": True,
        "modify_index": 7,
        "revision": 7,
    }
    assert fsm.store.get("kv", "web/a") == {
        "key": "web/a",
        "value": b"\x00new",
        "flags": 7,
        "lock_index": 0,
        "create_revision": 5,
        "mod_revision": 7,
    }


def check_kv_delete(fsm: FSM, before: dict[str, Any]) -> None:
    assert fsm.apply(kv_delete("web/a"))["ok"] is True
    assert fsm.store.get("kv", "web/a") is None
    assert fsm.store.get("kv", "web/b") is not None
    assert fsm.store.revision == 7
    assert fsm.apply(kv_delete("web/", recurse=True))["ok"] is True
    assert fsm.store.table("kv").records == {}
    assert fsm.store.revision == 8


def image_entry(kind: EntryType, body: dict[str, Any]) -> bytes:
    return Entry(kind, body).encode()


IMAGE = {
    "id": "img1",
    "name": "Ubuntu 20.04",
    "description": "focal",
    "status": "importing",
    "status_message": "",
    "progress": 0,
    "fingerprint": None,
    "size": None,
    "virtual_size": None,
    "format": None,
    "node": "n1",
    "holders": [],
    "created_at": "2026-01-01T00:00:00.000000Z",
    "updated_at": "2026-01-01T00:00:00.000000Z",
}


def check_image_create(fsm: FSM, before: dict[str, Any]) -> None:
    result = fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": IMAGE}))
    assert result["ok"] is True and result["image"]["create_revision"] == 7
    again = fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": {**IMAGE, "id": "img2"}}))
    assert again["ok"] is False and "already exists" in again["error"]["message"]
    assert fsm.store.get("images", "img2") is None and fsm.store.revision == 7


def check_image_update(fsm: FSM, before: dict[str, Any]) -> None:
    fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": IMAGE}))
    fields = {"status": "ready", "fingerprint": "ab" * 32, "size": 10, "format": "raw"}
    assert fsm.apply(image_entry(EntryType.IMAGE_UPDATE, {"id": "img1", "fields": fields}))["ok"]
    record = fsm.store.get("images", "img1")
    assert record is not None and record["status"] == "ready" and record["mod_revision"] == 8
    missing = fsm.apply(image_entry(EntryType.IMAGE_UPDATE, {"id": "nope", "fields": fields}))
    assert missing["error"]["code"] == "not_found"


def check_image_delete(fsm: FSM, before: dict[str, Any]) -> None:
    fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": IMAGE}))
    assert fsm.apply(image_entry(EntryType.IMAGE_DELETE, {"id": "img1"}))["ok"] is True
    assert fsm.store.get("images", "img1") is None
    assert fsm.apply(image_entry(EntryType.IMAGE_DELETE, {"id": "img1"}))["ok"] is False


def check_image_add_holder(fsm: FSM, before: dict[str, Any]) -> None:
    fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": IMAGE}))
    body = {"id": "img1", "node": "n2", "now": "2026-01-02T00:00:00.000000Z"}
    fsm.apply(image_entry(EntryType.IMAGE_ADD_HOLDER, body))
    fsm.apply(image_entry(EntryType.IMAGE_ADD_HOLDER, {**body, "node": "n1"}))
    fsm.apply(image_entry(EntryType.IMAGE_ADD_HOLDER, body))  # twice: no duplicate
    record = fsm.store.get("images", "img1")
    assert record is not None and record["holders"] == ["n1", "n2"]


def check_image_remove_holder(fsm: FSM, before: dict[str, Any]) -> None:
    fsm.apply(image_entry(EntryType.IMAGE_CREATE, {"image": {**IMAGE, "holders": ["n1", "n2"]}}))
    body = {"id": "img1", "node": "n1", "now": "2026-01-02T00:00:00.000000Z"}
    assert fsm.apply(image_entry(EntryType.IMAGE_REMOVE_HOLDER, body))["ok"] is True
    record = fsm.store.get("images", "img1")
    assert record is not None and record["holders"] == ["n2"]


def check_cluster_config(fsm: FSM, before: dict[str, Any]) -> None:
    body = {"key": "images.min_replicas", "value": 3}
    assert fsm.apply(Entry(EntryType.CLUSTER_CONFIG, body).encode())["ok"] is True
    record = fsm.store.get("cluster", "cluster")
    assert record is not None and record["config"] == {"images.min_replicas": 3}
    unknown = fsm.apply(Entry(EntryType.CLUSTER_CONFIG, {"key": "nope", "value": 1}).encode())
    assert unknown["ok"] is False and unknown["error"]["code"] == "invalid"


SERVICE = {
    "id": "svc1",
    "node": "n1",
    "type": "block",
    "driver": "file",
    "pool": "default",
    "options": {},
    "health": None,
    "capacity": None,
}
VOLUME = {
    "id": "vol1",
    "name": "data",
    "node": "n1",
    "service_id": "svc1",
    "pool": "default",
    "size": 1 << 30,
    "image_id": None,
    "overlay": False,
    "status": "pending",
    "status_message": "",
    "format": None,
    "allocated": None,
    "snapshots": [],
    "snapshots_done": [],
}


def apply_entry(fsm: FSM, kind: EntryType, body: dict[str, Any]) -> dict[str, Any]:
    return fsm.apply(Entry(kind, body).encode())


def check_service_create(fsm: FSM, before: dict[str, Any]) -> None:
    assert apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": SERVICE})["ok"]
    again = apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": {**SERVICE, "id": "svc2"}})
    assert again["ok"] is False and "already has a block service" in again["error"]["message"]


def check_service_update(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": SERVICE})
    health = {"ok": True, "message": "fine", "checked_at": "t"}
    assert apply_entry(fsm, EntryType.SERVICE_UPDATE, {"id": "svc1", "fields": {"health": health}})[
        "ok"
    ]
    assert fsm.store.get("services", "svc1")["health"] == health


def check_service_delete(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": SERVICE})
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": VOLUME})
    refused = apply_entry(fsm, EntryType.SERVICE_DELETE, {"id": "svc1"})
    assert refused["ok"] is False and "still has volumes" in refused["error"]["message"]
    apply_entry(fsm, EntryType.VOLUME_DELETE, {"id": "vol1"})
    assert apply_entry(fsm, EntryType.SERVICE_DELETE, {"id": "svc1"})["ok"]


def check_volume_create(fsm: FSM, before: dict[str, Any]) -> None:
    assert apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": VOLUME})["ok"]
    twin = apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": {**VOLUME, "id": "vol2"}})
    assert twin["ok"] is False and "already exists" in twin["error"]["message"]


def check_volume_update(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": VOLUME})
    claim = {"id": "vol1", "fields": {"status": "creating"}, "expect_status": "pending"}
    assert apply_entry(fsm, EntryType.VOLUME_UPDATE, claim)["ok"]
    second = apply_entry(fsm, EntryType.VOLUME_UPDATE, claim)  # a second claim loses
    assert second["ok"] is False and second["error"]["code"] == "conflict"


def check_record_claim(fsm: FSM, before: dict[str, Any]) -> None:
    """A claim moves only the status, only on the record's own node, only from the status
    it names: a second claim, another node's, or one of an unclaimed table is refused."""
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": VOLUME})
    claim = {"table": "volumes", "id": "vol1", "node": "n1", "at": "2026-12-04T00:00:00Z"}
    claim |= {"from_status": "pending", "to_status": "creating"}
    by_n2 = apply_entry(fsm, EntryType.RECORD_CLAIM, {**claim, "node": "n2"})
    assert by_n2["ok"] is False and "on node n1, not n2" in by_n2["error"]["message"]
    assert apply_entry(fsm, EntryType.RECORD_CLAIM, claim)["ok"]
    record = dict(fsm.store.get("volumes", "vol1"))
    record.pop("create_revision"), record.pop("mod_revision")
    assert record == {**VOLUME, "status": "creating", "updated_at": "2026-12-04T00:00:00Z"}
    second = apply_entry(fsm, EntryType.RECORD_CLAIM, claim)
    assert second["ok"] is False and second["error"]["code"] == "conflict"
    elsewhere = apply_entry(fsm, EntryType.RECORD_CLAIM, {**claim, "table": "tokens"})
    assert elsewhere["ok"] is False and elsewhere["error"]["code"] == "invalid"
    gone = apply_entry(fsm, EntryType.RECORD_CLAIM, {**claim, "id": "vol9"})
    assert gone["ok"] is False and gone["error"]["code"] == "not_found"


def check_volume_delete(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.IMAGE_CREATE, {"image": IMAGE})
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": {**VOLUME, "image_id": "img1"}})
    in_use = apply_entry(fsm, EntryType.IMAGE_DELETE, {"id": "img1"})
    assert in_use["ok"] is False and "used by volumes: data" in in_use["error"]["message"]
    assert apply_entry(fsm, EntryType.VOLUME_DELETE, {"id": "vol1"})["ok"]
    assert apply_entry(fsm, EntryType.IMAGE_DELETE, {"id": "img1"})["ok"]


def check_volume_place(fsm: FSM, before: dict[str, Any]) -> None:
    unplaced = {**VOLUME, "node": None, "service_id": None, "pool": None}
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": unplaced})
    place = {"id": "vol1", "node": "n1", "service_id": "svc1", "pool": "default"}
    assert apply_entry(fsm, EntryType.VOLUME_PLACE, place)["ok"]
    record = fsm.store.get("volumes", "vol1")
    assert (record["node"], record["service_id"], record["pool"]) == ("n1", "svc1", "default")
    # A second scheduler (an old leader) cannot move it.
    again = apply_entry(fsm, EntryType.VOLUME_PLACE, {**place, "node": "n2"})
    assert again["ok"] is False and "already placed" in again["error"]["message"]
    assert fsm.store.get("volumes", "vol1")["node"] == "n1"


LVM_SERVICE = {**SERVICE, "driver": "lvm", "pool": "vg0"}
PV = {
    "id": "pv1",
    "node": "n1",
    "service_id": "svc1",
    "device": "/dev/loop7",
    "status": "pending",
    "status_message": "",
    "size": None,
    "free": None,
    "vg_id": None,
    "created_at": "t0",
    "updated_at": "t0",
}
VG = {
    "id": "vg1",
    "name": "vg0",
    "node": "n1",
    "service_id": "svc1",
    "pv_ids": ["pv1"],
    "status": "pending",
    "status_message": "",
    "size": None,
    "free": None,
    "created_at": "t1",
    "updated_at": "t1",
}


def ready_pv(fsm: FSM) -> None:
    apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": LVM_SERVICE})
    apply_entry(fsm, EntryType.PV_CREATE, {"pv": PV})
    apply_entry(fsm, EntryType.PV_UPDATE, {"id": "pv1", "fields": {"status": "ready"}})


def check_pv_create(fsm: FSM, before: dict[str, Any]) -> None:
    assert apply_entry(fsm, EntryType.PV_CREATE, {"pv": PV})["ok"]
    twin = apply_entry(fsm, EntryType.PV_CREATE, {"pv": {**PV, "id": "pv2"}})
    assert twin["ok"] is False and "already physical volume pv1" in twin["error"]["message"]
    elsewhere = apply_entry(fsm, EntryType.PV_CREATE, {"pv": {**PV, "id": "pv3", "node": "n2"}})
    assert elsewhere["ok"]


def check_pv_update(fsm: FSM, before: dict[str, Any]) -> None:
    ready_pv(fsm)
    apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})
    refused = apply_entry(fsm, EntryType.PV_UPDATE, {"id": "pv1", "fields": {"status": "deleting"}})
    assert refused["ok"] is False and "belongs to volume group vg0" in refused["error"]["message"]
    assert fsm.store.get("pvs", "pv1")["status"] == "ready"


def check_pv_delete(fsm: FSM, before: dict[str, Any]) -> None:
    ready_pv(fsm)
    apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})
    in_group = apply_entry(fsm, EntryType.PV_DELETE, {"id": "pv1"})
    assert in_group["ok"] is False
    held = apply_entry(fsm, EntryType.SERVICE_DELETE, {"id": "svc1"})
    assert held["ok"] is False and "volume groups or physical volumes" in held["error"]["message"]
    assert apply_entry(fsm, EntryType.VG_DELETE, {"id": "vg1"})["ok"]
    assert apply_entry(fsm, EntryType.PV_DELETE, {"id": "pv1"})["ok"]
    assert fsm.store.get("pvs", "pv1") is None


def check_vg_create(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": LVM_SERVICE})
    apply_entry(fsm, EntryType.PV_CREATE, {"pv": PV})
    not_ready = apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})
    assert not_ready["ok"] is False and "not ready" in not_ready["error"]["message"]
    apply_entry(fsm, EntryType.PV_UPDATE, {"id": "pv1", "fields": {"status": "ready"}})
    assert apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})["ok"]
    assert fsm.store.get("pvs", "pv1")["vg_id"] == "vg1"
    taken = apply_entry(fsm, EntryType.VG_CREATE, {"vg": {**VG, "id": "vg2", "name": "other"}})
    assert taken["ok"] is False and "already belongs" in taken["error"]["message"]
    same = apply_entry(fsm, EntryType.VG_CREATE, {"vg": {**VG, "id": "vg3", "pv_ids": []}})
    assert same["ok"] is False and "already has a volume group vg0" in same["error"]["message"]


def check_vg_update(fsm: FSM, before: dict[str, Any]) -> None:
    ready_pv(fsm)
    apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})
    apply_entry(fsm, EntryType.VG_UPDATE, {"id": "vg1", "fields": {"status": "ready"}})
    lv = {**VOLUME, "pool": "vg0"}
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": lv})
    busy = apply_entry(fsm, EntryType.VG_UPDATE, {"id": "vg1", "fields": {"status": "deleting"}})
    assert busy["ok"] is False and "still holds volumes: data" in busy["error"]["message"]
    apply_entry(fsm, EntryType.VOLUME_DELETE, {"id": "vol1"})
    gone = apply_entry(fsm, EntryType.VG_UPDATE, {"id": "vg1", "fields": {"status": "deleting"}})
    assert gone["ok"]


def check_vg_delete(fsm: FSM, before: dict[str, Any]) -> None:
    ready_pv(fsm)
    apply_entry(fsm, EntryType.VG_CREATE, {"vg": VG})
    assert apply_entry(fsm, EntryType.VG_DELETE, {"id": "vg1"})["ok"]
    assert fsm.store.get("pvs", "pv1")["vg_id"] is None  # the device is free again


def _step(index: int, after: list[int]) -> dict[str, Any]:
    return {
        "index": index,
        "node": "n1",
        "lifecycle": "WebServer",
        "action": "enter",
        "state": ["Installed", "Configured"][index],
        "provide": "enter",
        "values": {},
        "inputs": [],
        "after": after,
        "status": "pending",
        "error": None,
        "returns": None,
    }


DEPLOYMENT = {
    "id": "d1",
    "kind": "deploy",
    "target": "WebServer/Configured/enter",
    "node": "n1",
    "simulate": False,
    "undoes": None,
    "steps": [_step(0, []), _step(1, [0])],
    "result_step": 1,
    "result": None,
    "created_at": "2026-11-22T00:00:00Z",
    "updated_at": "2026-11-22T00:00:00Z",
}


def finish_step(fsm: FSM, index: int, applied: list[str], status: str = "done") -> dict[str, Any]:
    change = {
        "node": "n1",
        "lifecycle": "WebServer",
        "applied": applied,
        "data": {"port": 8080},
        "call": {"provide": f"{applied[-1]}/enter", "values": {}, "returns": {"x": index}},
    }
    body = {
        "id": "d1",
        "index": index,
        "expect": "running",
        "fields": {"status": status, "returns": {"x": index}},
        "lifecycle": change if status == "done" else None,
        "at": "2026-11-22T00:00:01Z",
    }
    return apply_entry(fsm, EntryType.DEPLOYMENT_STEP, body)


def claim_step(fsm: FSM, index: int) -> dict[str, Any]:
    body = {
        "id": "d1",
        "index": index,
        "expect": "pending",
        "fields": {"status": "running"},
        "lifecycle": None,
        "at": "2026-11-22T00:00:01Z",
    }
    return apply_entry(fsm, EntryType.DEPLOYMENT_STEP, body)


def check_lifecycle_catalog(fsm: FSM, before: dict[str, Any]) -> None:
    catalog = {"node": "n1", "lifecycles": {"WebServer": "builtin"}, "broken": {"m": "boom"}}
    assert apply_entry(fsm, EntryType.LIFECYCLE_CATALOG, {"catalog": catalog})["ok"]
    assert fsm.store.get("lifecycle_catalogs", "n1")["broken"] == {"m": "boom"}


def check_deployment_create(fsm: FSM, before: dict[str, Any]) -> None:
    created = apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": DEPLOYMENT})
    assert created["ok"] and created["deployment"]["status"] == "running"
    again = apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": DEPLOYMENT})
    assert again["ok"] is False and "already exists" in again["error"]["message"]
    empty = {**DEPLOYMENT, "id": "d0", "steps": [], "result_step": None}
    assert (
        apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": empty})["deployment"]["status"]
        == "done"
    )


def check_deployment_step(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": DEPLOYMENT})
    assert claim_step(fsm, 0)["ok"]
    twice = claim_step(fsm, 0)  # a second agent cannot claim it
    assert twice["ok"] is False and "is running, not pending" in twice["error"]["message"]
    assert finish_step(fsm, 0, ["NotInstalled", "Installed"])["ok"]
    record = fsm.store.get("lifecycles", "n1/WebServer")
    assert record["applied"] == ["NotInstalled", "Installed"]  # in the same revision
    assert record["calls"]["Installed/enter"]["returns"] == {"x": 0}
    claim_step(fsm, 1)
    done = finish_step(fsm, 1, ["NotInstalled", "Installed", "Configured"])
    assert done["deployment"]["status"] == "done" and done["deployment"]["result"] == {"x": 1}
    # leaving a state forgets the calls that held in it
    apply_entry(
        fsm,
        EntryType.DEPLOYMENT_CREATE,
        {"deployment": {**DEPLOYMENT, "id": "d2", "steps": [_step(0, [])], "result_step": 0}},
    )
    body = {
        "id": "d2",
        "index": 0,
        "expect": None,
        "fields": {"status": "done"},
        "lifecycle": {
            "node": "n1",
            "lifecycle": "WebServer",
            "applied": ["NotInstalled"],
            "data": {},
            "call": None,
        },
        "at": "2026-11-22T00:00:02Z",
    }
    apply_entry(fsm, EntryType.DEPLOYMENT_STEP, body)
    assert fsm.store.get("lifecycles", "n1/WebServer")["calls"] == {}
    missing = apply_entry(fsm, EntryType.DEPLOYMENT_STEP, {**body, "index": 7})
    assert missing["ok"] is False and "no step 7" in missing["error"]["message"]


def check_deployment_update(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": DEPLOYMENT})
    claim_step(fsm, 0)
    failed = finish_step(fsm, 0, ["NotInstalled"], status="failed")
    assert failed["deployment"]["status"] == "failed"
    steps = [{**s, "status": "pending"} for s in failed["deployment"]["steps"]]
    resumed = apply_entry(
        fsm, EntryType.DEPLOYMENT_UPDATE, {"id": "d1", "fields": {"steps": steps}}
    )
    assert resumed["deployment"]["status"] == "running"


def check_deployment_delete(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.DEPLOYMENT_CREATE, {"deployment": DEPLOYMENT})
    busy = apply_entry(fsm, EntryType.DEPLOYMENT_DELETE, {"id": "d1"})
    assert busy["ok"] is False and "running" in busy["error"]["message"]
    claim_step(fsm, 0)
    finish_step(fsm, 0, ["NotInstalled"], status="failed")
    assert apply_entry(fsm, EntryType.DEPLOYMENT_DELETE, {"id": "d1"})["ok"]
    assert fsm.store.get("deployments", "d1") is None


INSTANCE = {
    "id": "inst1",
    "name": "web",
    "node": None,
    "service_id": None,
    "placement": {"node": None},
    "image_id": "img1",
    "cpus": 1,
    "memory": 1 << 30,
    "disk": 10 << 30,
    "root_volume_id": None,
    "volumes": [],
    "network": "user",
    "user_data": "#cloud-config\n",
    "network_config": None,
    "power": "running",
    "stop": None,
    "restarts": 0,
    "restarts_done": 0,
    "keep_volumes": False,
    "status": "pending",
    "status_message": "",
    "last_error": None,
    "domain": None,
    "created_at": NOW,
    "updated_at": NOW,
}
ROOT = {**VOLUME, "id": "root1", "name": "web-root", "image_id": "img1", "status": "pending"}


def place_instance(fsm: FSM) -> dict[str, Any]:
    apply_entry(fsm, EntryType.IMAGE_CREATE, {"image": IMAGE})
    apply_entry(fsm, EntryType.SERVICE_CREATE, {"service": SERVICE})
    apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": INSTANCE})
    body = {"id": "inst1", "node": "n1", "service_id": "csvc1", "root_volume": ROOT}
    return apply_entry(fsm, EntryType.INSTANCE_PLACE, body)


def check_instance_create(fsm: FSM, before: dict[str, Any]) -> None:
    assert apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": INSTANCE})["ok"]
    twin = apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": {**INSTANCE, "id": "i2"}})
    assert twin["ok"] is False and "named 'web' already exists" in twin["error"]["message"]
    # body version 2 places as it applies (tests/test_compute_decide.py); with no compute
    # service among the candidates it is recorded unplaced, for the leader
    placing = {"candidates": ["n1"], "root_volume_id": "r9"}
    other = {**INSTANCE, "id": "i3", "name": "db"}
    made = apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": other, "placing": placing})
    assert made["ok"] and (made["instance"]["node"], made["instance"]["status"]) == (
        None,
        "pending",
    )
    # the image cannot go while an instance made from it exists
    apply_entry(fsm, EntryType.IMAGE_CREATE, {"image": IMAGE})
    in_use = apply_entry(fsm, EntryType.IMAGE_DELETE, {"id": "img1"})
    assert in_use["ok"] is False and "used by instances: db, web" in in_use["error"]["message"]


def check_instance_update(fsm: FSM, before: dict[str, Any]) -> None:
    apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": INSTANCE})
    claim = {"id": "inst1", "fields": {"status": "creating"}, "expect_status": "pending"}
    assert apply_entry(fsm, EntryType.INSTANCE_UPDATE, claim)["ok"]
    second = apply_entry(fsm, EntryType.INSTANCE_UPDATE, claim)
    assert second["ok"] is False and second["error"]["code"] == "conflict"
    assert fsm.store.get("instances", "inst1")["status"] == "creating"


def check_instance_place(fsm: FSM, before: dict[str, Any]) -> None:
    placed = place_instance(fsm)
    assert placed["ok"], placed
    record = fsm.store.get("instances", "inst1")
    assert (record["node"], record["service_id"], record["root_volume_id"]) == (
        "n1",
        "csvc1",
        "root1",
    )
    assert fsm.store.get("volumes", "root1")["node"] == "n1"
    # once only: an old leader's second placement changes nothing, and makes no volume
    again = {"id": "inst1", "node": "n2", "service_id": "x", "root_volume": {**ROOT, "id": "r2"}}
    refused = apply_entry(fsm, EntryType.INSTANCE_PLACE, again)
    assert refused["ok"] is False and "already placed" in refused["error"]["message"]
    assert fsm.store.get("volumes", "r2") is None
    # the root volume cannot be removed on its own while the instance uses it
    doomed = {"id": "root1", "fields": {"status": "deleting"}}
    in_use = apply_entry(fsm, EntryType.VOLUME_UPDATE, doomed)
    assert in_use["ok"] is False and "attached to instance web" in in_use["error"]["message"]


def check_instance_delete(fsm: FSM, before: dict[str, Any]) -> None:
    place_instance(fsm)
    ready = {"id": "root1", "fields": {"status": "ready"}}
    assert apply_entry(fsm, EntryType.VOLUME_UPDATE, ready)["ok"]
    body = {"id": "inst1", "keep_volumes": False, "now": LATER}
    assert apply_entry(fsm, EntryType.INSTANCE_DELETE, body)["ok"]
    assert fsm.store.get("instances", "inst1") is None
    root = fsm.store.get("volumes", "root1")
    assert root["status"] == "deleting" and root["updated_at"] == LATER
    missing = apply_entry(fsm, EntryType.INSTANCE_DELETE, body)
    assert missing["ok"] is False and missing["error"]["code"] == "not_found"


DATA = {**VOLUME, "id": "data1", "name": "data", "status": "ready"}


def check_instance_attach(fsm: FSM, before: dict[str, Any]) -> None:
    place_instance(fsm)
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": DATA})
    body = {"id": "inst1", "volume_id": "data1", "now": LATER}
    assert apply_entry(fsm, EntryType.INSTANCE_ATTACH, body)["ok"]
    assert fsm.store.get("instances", "inst1")["volumes"] == ["data1"]
    twice = apply_entry(fsm, EntryType.INSTANCE_ATTACH, body)
    assert twice["ok"] is False and "already attached" in twice["error"]["message"]
    other = {**INSTANCE, "id": "inst2", "name": "db"}
    apply_entry(fsm, EntryType.INSTANCE_CREATE, {"instance": other})
    taken = apply_entry(fsm, EntryType.INSTANCE_ATTACH, {**body, "id": "inst2"})
    assert taken["ok"] is False and "attached to instance web" in taken["error"]["message"]
    far = {**DATA, "id": "data2", "name": "far", "node": "n2"}
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": far})
    elsewhere = apply_entry(fsm, EntryType.INSTANCE_ATTACH, {**body, "volume_id": "data2"})
    assert elsewhere["ok"] is False and "on its own node" in elsewhere["error"]["message"]


def check_instance_detach(fsm: FSM, before: dict[str, Any]) -> None:
    place_instance(fsm)
    apply_entry(fsm, EntryType.VOLUME_CREATE, {"volume": DATA})
    body = {"id": "inst1", "volume_id": "data1", "now": LATER}
    apply_entry(fsm, EntryType.INSTANCE_ATTACH, body)
    # the domain holds it (applied): it stays in use after the detach is asked
    held = {"applied": {"cpus": 1, "memory": 1 << 30, "volumes": {"data1": "vdb"}}}
    apply_entry(fsm, EntryType.INSTANCE_UPDATE, {"id": "inst1", "fields": held})
    assert apply_entry(fsm, EntryType.INSTANCE_DETACH, body)["ok"]
    assert fsm.store.get("instances", "inst1")["volumes"] == []
    doomed = {"id": "data1", "fields": {"status": "deleting"}}
    assert apply_entry(fsm, EntryType.VOLUME_UPDATE, doomed)["ok"] is False
    again = apply_entry(fsm, EntryType.INSTANCE_DETACH, body)
    assert again["ok"] is False and "not attached" in again["error"]["message"]


def move(fsm: FSM, step: str, **body: Any) -> dict[str, Any]:
    return apply_entry(fsm, EntryType.INSTANCE_MOVE, {"id": "inst1", "step": step, "now": LATER,
                                                      **body})  # fmt: skip


def check_instance_move(fsm: FSM, before: dict[str, Any]) -> None:
    place_instance(fsm)
    ready = {"status": "ready"}
    apply_entry(fsm, EntryType.VOLUME_UPDATE, {"id": "root1", "fields": ready})
    running = {"id": "inst1", "fields": {"status": "running"}}
    apply_entry(fsm, EntryType.INSTANCE_UPDATE, running)
    target = {"node": "n2", "service_id": "c2", "block_service_id": "b2", "pool": "default",
              "was_running": True, "timeout": 60.0}  # fmt: skip
    assert move(fsm, "begin", move={**target, "node": "n1"})["ok"] is False  # its own node
    assert move(fsm, "begin", move=target)["ok"]
    record = fsm.store.get("instances", "inst1")
    assert (record["status"], record["power"], record["move"]["phase"]) == (
        "stopping",
        "stopped",
        "stopping",
    )
    assert move(fsm, "begin", move=target)["ok"] is False  # one move at a time
    early = move(fsm, "copy", volumes=[])
    assert early["ok"] is False and "not stopped" in early["error"]["message"]
    apply_entry(fsm, EntryType.INSTANCE_UPDATE, {"id": "inst1", "fields": {"status": "stopped"}})
    copy = {**ROOT, "id": "copy1", "name": "web-root-mv-1", "node": "n2", "status": "pending",
            "source": {"volume_id": "root1", "node": "n1", "format": "raw"}}  # fmt: skip
    assert move(fsm, "copy", volumes=[copy])["ok"]
    assert fsm.store.get("instances", "inst1")["move"]["volumes"] == {"root1": "copy1"}
    # the copy is held by the move: it cannot be removed on its own
    doomed = {"id": "copy1", "fields": {"status": "deleting"}}
    assert apply_entry(fsm, EntryType.VOLUME_UPDATE, doomed)["ok"] is False
    not_yet = move(fsm, "switch")
    assert not_yet["ok"] is False and "not ready" in not_yet["error"]["message"]
    apply_entry(fsm, EntryType.VOLUME_UPDATE, {"id": "copy1", "fields": ready})
    assert move(fsm, "switch")["ok"]
    record = fsm.store.get("instances", "inst1")
    assert (record["node"], record["root_volume_id"], record["status"], record["power"]) == (
        "n2",
        "copy1",
        "creating",
        "running",
    )
    assert move(fsm, "finish")["ok"]
    assert fsm.store.get("instances", "inst1")["move"] is None
    assert fsm.store.get("volumes", "root1")["status"] == "deleting"
    assert fsm.store.get("volumes", "copy1")["name"] == "web-root"
    # an aborted move removes its copies and starts the instance again where it was
    apply_entry(fsm, EntryType.INSTANCE_UPDATE, {"id": "inst1", "fields": {"status": "stopped"}})
    assert move(fsm, "begin", move={**target, "node": "n3"})["ok"]
    copy2 = {**copy, "id": "copy2", "name": "web-root-mv-2",
             "source": {"volume_id": "copy1", "node": "n2", "format": "raw"}}  # fmt: skip
    assert move(fsm, "copy", volumes=[copy2])["ok"]
    assert move(fsm, "abort", reason="the copy failed")["ok"]
    record = fsm.store.get("instances", "inst1")
    assert record["move"] is None and record["status"] == "starting"
    assert record["last_error"]["message"] == "the copy failed"
    assert fsm.store.get("volumes", "copy2") is None  # pending: removed at once


CHECKS = {
    EntryType.BARRIER: check_barrier,
    EntryType.CLUSTER_INIT: check_cluster_init,
    EntryType.CLUSTER_CONFIG: check_cluster_config,
    EntryType.NODE_ADD: check_node_add,
    EntryType.NODE_UPDATE: check_node_update,
    EntryType.NODE_REMOVE: check_node_remove,
    EntryType.TOKEN_CREATE: check_token_create,
    EntryType.TOKEN_USE: check_token_use,
    EntryType.TOKEN_DELETE: check_token_delete,
    EntryType.KV_PUT: check_kv_put,
    EntryType.KV_DELETE: check_kv_delete,
    EntryType.IMAGE_CREATE: check_image_create,
    EntryType.IMAGE_UPDATE: check_image_update,
    EntryType.IMAGE_DELETE: check_image_delete,
    EntryType.IMAGE_ADD_HOLDER: check_image_add_holder,
    EntryType.IMAGE_REMOVE_HOLDER: check_image_remove_holder,
    EntryType.SERVICE_CREATE: check_service_create,
    EntryType.SERVICE_UPDATE: check_service_update,
    EntryType.SERVICE_DELETE: check_service_delete,
    EntryType.VOLUME_CREATE: check_volume_create,
    EntryType.VOLUME_UPDATE: check_volume_update,
    EntryType.VOLUME_DELETE: check_volume_delete,
    EntryType.VOLUME_PLACE: check_volume_place,
    EntryType.PV_CREATE: check_pv_create,
    EntryType.PV_UPDATE: check_pv_update,
    EntryType.PV_DELETE: check_pv_delete,
    EntryType.VG_CREATE: check_vg_create,
    EntryType.VG_UPDATE: check_vg_update,
    EntryType.VG_DELETE: check_vg_delete,
    EntryType.LIFECYCLE_CATALOG: check_lifecycle_catalog,
    EntryType.DEPLOYMENT_CREATE: check_deployment_create,
    EntryType.DEPLOYMENT_STEP: check_deployment_step,
    EntryType.DEPLOYMENT_UPDATE: check_deployment_update,
    EntryType.DEPLOYMENT_DELETE: check_deployment_delete,
    EntryType.INSTANCE_CREATE: check_instance_create,
    EntryType.INSTANCE_UPDATE: check_instance_update,
    EntryType.INSTANCE_DELETE: check_instance_delete,
    EntryType.INSTANCE_PLACE: check_instance_place,
    EntryType.INSTANCE_ATTACH: check_instance_attach,
    EntryType.INSTANCE_DETACH: check_instance_detach,
    EntryType.INSTANCE_MOVE: check_instance_move,
    EntryType.RECORD_CLAIM: check_record_claim,
}


def test_every_entry_type_has_a_check() -> None:
    assert set(CHECKS) == set(EntryType)


@pytest.mark.parametrize("entry_type", list(EntryType), ids=lambda t: t.name)
def test_apply_each_entry_type_then_snapshot_round_trip(
    cluster_fsm: FSM, entry_type: EntryType
) -> None:
    CHECKS[entry_type](cluster_fsm, state(cluster_fsm.store))

    restored = round_trip(cluster_fsm)
    assert state(restored.store) == state(cluster_fsm.store)
    # the restored key index serves prefix reads like the original
    for name in Store.TABLES:
        assert list(restored.store.table(name).keys_with_prefix("")) == list(
            cluster_fsm.store.table(name).keys_with_prefix("")
        )


def test_restore_throws_away_the_old_state(cluster_fsm: FSM) -> None:
    other = fresh()
    apply_all(other, [kv_put(f"junk/{i}", b"x") for i in range(10)])
    other.restore(cluster_fsm.snapshot())
    assert state(other.store) == state(cluster_fsm.store)
    assert other.store.get("kv", "junk/0") is None


def test_restore_then_apply_continues_the_revisions(cluster_fsm: FSM) -> None:
    restored = round_trip(cluster_fsm)
    result = restored.apply(kv_put("web/a", b"3", cas=5))
    assert result == {"ok": True, "modify_index": 7, "revision": 7}
    assert restored.store.get("kv", "web/a")["create_revision"] == 5


def test_restore_refuses_a_foreign_or_newer_format_snapshot(cluster_fsm: FSM) -> None:
    body = cluster_fsm.store.dump()
    foreign = msgpack.packb([{"magic": "other", "format": 1, "schema": 1}, body])
    newer_format = msgpack.packb([{"magic": SNAPSHOT_MAGIC, "format": 2, "schema": 1}, body])
    target = fresh()
    target.apply(kv_put("mine", b"1"))
    before = state(target.store)
    for data in (foreign, newer_format):
        with pytest.raises(ValueError):
            target.restore(data)
        assert state(target.store) == before


def test_a_newer_schema_snapshot_loads_and_keeps_unknown_tables(cluster_fsm: FSM) -> None:
    """A snapshot from a node of the next version (mid rolling upgrade) is read: tables
    this code does not know are kept, untouched, and written back in its snapshots."""
    body = cluster_fsm.store.dump()
    body["records"].append(["future_table", "x", {"anything": 1, "mod_revision": 1}])
    newer = msgpack.packb(
        [{"magic": SNAPSHOT_MAGIC, "format": 1, "schema": SCHEMA_VERSION + 1}, body]
    )
    target = fresh()
    target.restore(newer)
    assert target.store.get("future_table", "x") == {"anything": 1, "mod_revision": 1}
    assert state(target.store)["tables"]["kv"] == state(cluster_fsm.store)["tables"]["kv"]
    again = fresh()
    again.restore(target.snapshot())
    assert again.store.get("future_table", "x") == {"anything": 1, "mod_revision": 1}


def test_proposals_wait_for_every_member_to_know_a_new_entry_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from symphonyd.errors import Conflict
    from symphonyd.raft import entries

    monkeypatch.setitem(entries.INTRODUCED, 99, 2)
    entries.check_schema(EntryType.KV_PUT, {"n1": 1, "n2": 2})  # old types: always fine
    entries.check_schema(99, {"n1": 2, "n2": 2})
    with pytest.raises(Conflict, match="n1 run an older symphonyd"):
        entries.check_schema(99, {"n1": 1, "n2": 2})


# -- refusals that change nothing ------------------------------------------------------------


def test_an_unknown_entry_type_is_refused_and_changes_nothing(cluster_fsm: FSM) -> None:
    before = state(cluster_fsm.store)
    applied = cluster_fsm.applied
    result = cluster_fsm.apply(unchecked(Entry(99, {"key": "x", "value": b"1"})))
    assert result["ok"] is False
    assert result["error"]["code"] == "unsupported_entry"
    assert "99" in result["error"]["message"]
    assert state(cluster_fsm.store) == before
    assert cluster_fsm.refused_unknown == 1
    assert cluster_fsm.applied == applied


def test_a_newer_schema_version_is_refused_and_changes_nothing(cluster_fsm: FSM) -> None:
    before = state(cluster_fsm.store)
    entry = Entry(EntryType.KV_PUT, {"key": "x", "value": b"1"}, version=SCHEMA_VERSION + 1)
    result = cluster_fsm.apply(unchecked(entry))
    assert result["ok"] is False
    assert result["error"]["code"] == "unsupported_entry"
    assert "upgrade" in result["error"]["message"]
    assert cluster_fsm.store.get("kv", "x") is None
    assert state(cluster_fsm.store) == before
    assert cluster_fsm.refused_unknown == 1


@pytest.mark.parametrize("data", [b"", b"\xc1\xc1", b"\xff" * 16, b"hello", msgpack.packb([3, 1])])
def test_garbage_bytes_are_refused_and_change_nothing(cluster_fsm: FSM, data: bytes) -> None:
    before = state(cluster_fsm.store)
    result = cluster_fsm.apply(data)
    assert result["ok"] is False
    assert result["error"]["code"] == "invalid"
    assert state(cluster_fsm.store) == before


@pytest.mark.parametrize(
    "entry",
    [
        Entry(EntryType.KV_PUT, {"value": b"1"}),  # no key
        Entry(EntryType.KV_PUT, {"key": "k"}),  # no value
        Entry(EntryType.KV_DELETE, {}),
        Entry(EntryType.CLUSTER_INIT, {}),
        Entry(EntryType.NODE_ADD, {}),
        Entry(EntryType.NODE_ADD, {"node": {"name": "n5"}}),  # no raft_addr
        Entry(EntryType.NODE_ADD, {"node": "n5"}),  # not a map
        Entry(EntryType.NODE_UPDATE, {"name": "n1"}),  # no fields
        Entry(EntryType.NODE_UPDATE, {"name": "n1", "fields": ["status"]}),
        Entry(EntryType.NODE_REMOVE, {}),
        Entry(EntryType.TOKEN_CREATE, {"token": {"kind": "join"}}),  # no id
        Entry(EntryType.TOKEN_USE, {"id": "join1", "now": NOW, "used_by": "n5"}),  # no secret
        Entry(EntryType.TOKEN_DELETE, {}),
        Entry(  # token without "now"
            EntryType.NODE_ADD,
            {"node": node("n5", 7005), "token": {"id": "join1", "secret_sha256": "x"}},
        ),
    ],
    ids=lambda e: EntryType(e.type).name,
)
def test_a_malformed_body_is_refused_and_changes_nothing(cluster_fsm: FSM, entry: Entry) -> None:
    before = state(cluster_fsm.store)
    result = cluster_fsm.apply(unchecked(entry))  # encode refuses them (test_entry_schemas)
    assert result["ok"] is False
    assert result["error"]["code"] == "invalid"
    assert "malformed" in result["error"]["message"]
    assert result["revision"] == 6
    assert state(cluster_fsm.store) == before
    # the FSM keeps working afterwards
    assert cluster_fsm.apply(kv_put("after", b"1"))["revision"] == 7


def test_an_entry_that_fails_halfway_changes_nothing(cluster_fsm: FSM) -> None:
    # A node name that cannot be sorted with the existing names (an int) passes the token
    # and name checks, consumes the token, then fails inside nodes.add.
    before = state(cluster_fsm.store)
    bad = {**node("n5", 7005), "name": 5}
    token = {"id": "join1", "secret_sha256": sha256_hex(SECRET), "now": NOW}
    result = cluster_fsm.apply(Entry(EntryType.NODE_ADD, {"node": bad, "token": token}).encode())
    assert result["ok"] is False
    assert result["error"]["code"] == "invalid"
    assert cluster_fsm.store.get("tokens", "join1").get("used_at") is None
    assert state(cluster_fsm.store) == before


def test_results_carry_the_revision_of_the_entry(cluster_fsm: FSM) -> None:
    assert cluster_fsm.apply(kv_put("x", b"1"))["revision"] == 7
    refused = cluster_fsm.apply(kv_put("x", b"2", cas=0))
    assert refused == {"ok": False, "revision": 7}
    assert cluster_fsm.apply(kv_put("y", b"1"))["revision"] == 8
    assert cluster_fsm.applied == 9  # 6 setup entries + 3


def test_the_timestamps_in_entries_come_from_the_entry_not_the_clock() -> None:
    # Applying the same token entry at any time gives the same record: no clock in apply.
    token = {
        "id": "t",
        "kind": "join",
        "secret_sha256": sha256_hex("s"),
        "created_at": "2000-01-01T00:00:00.000000Z",
        "expires_at": "2000-01-02T00:00:00.000000Z",
    }
    fsm = fresh()
    fsm.apply(Entry(EntryType.TOKEN_CREATE, {"token": token}).encode())
    use = {"id": "t", "secret_sha256": sha256_hex("s"), "now": "2000-01-01T12:00:00.000000Z"}
    result = fsm.apply(Entry(EntryType.TOKEN_USE, {**use, "used_by": "n"}).encode())
    assert result["ok"] is True  # long expired by the wall clock, not by the entry's "now"
    assert now_rfc3339() > token["expires_at"]


# -- generated KV histories -------------------------------------------------------------------

# Few keys, some prefixes of others, so CAS hits existing keys and trees overlap.
KEYS = st.sampled_from(["a", "a/x", "a/y", "b"])
VALUES = st.binary(max_size=8)
# How a cas is chosen when the entry is built: none, 0, the key's current mod_revision
# ("right"), an older revision ("stale"), or a fixed small number.
CAS = st.sampled_from([None, None, 0, "right", "right", "stale", 1, 2, 5])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["put"] * 4 + ["delete"] * 2 + ["delete_tree"]),  # mostly puts
        KEYS,
        VALUES,
        CAS,  # ignored by delete_tree
    ),
    max_size=40,
)


@dataclass
class KVModel:
    """Consul's KV semantics, written plainly: key -> (value, create, modify)."""

    revision: int = 0
    keys: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)

    def resolve_cas(self, key: str, cas: Any) -> int | None:
        current = self.keys.get(key)
        if cas == "right":
            return current[2] if current else self.revision + 1
        if cas == "stale":
            return max(current[2] - 1, 1) if current else max(self.revision, 1)
        return cas

    def put(self, key: str, value: bytes, cas: int | None) -> bool:
        current = self.keys.get(key)
        if cas == 0 and current is not None:
            return False
        if cas and (current is None or current[2] != cas):
            return False
        self.revision += 1
        create = current[1] if current else self.revision
        self.keys[key] = (value, create, self.revision)
        return True

    def delete(self, key: str, cas: int | None) -> bool:
        current = self.keys.get(key)
        if current is None:
            return True  # Consul: deleting a missing key succeeds, cas or not
        if cas is not None and current[2] != cas:
            return False
        if current is not None:
            self.revision += 1
            del self.keys[key]
        return True

    def delete_tree(self, prefix: str) -> bool:
        doomed = [k for k in self.keys if k.startswith(prefix)]
        if doomed:
            self.revision += 1
            for k in doomed:
                del self.keys[k]
        return True


def build(ops: list[tuple[str, str, bytes, Any]]) -> tuple[list[bytes], list[bool], KVModel]:
    """Encode `ops` as entries (resolving each cas against the model) and run the model."""
    model = KVModel()
    entries: list[bytes] = []
    expected: list[bool] = []
    for op, key, value, cas_kind in ops:
        cas = model.resolve_cas(key, cas_kind)
        if op == "put":
            entries.append(kv_put(key, value, cas))
            expected.append(model.put(key, value, cas))
        elif op == "delete":
            entries.append(kv_delete(key, cas))
            expected.append(model.delete(key, cas))
        else:
            entries.append(kv_delete(key, recurse=True))
            expected.append(model.delete_tree(key))
    return entries, expected, model


def kv_state(store: Store) -> dict[str, tuple[bytes, int, int]]:
    return {
        key: (r["value"], r["create_revision"], r["mod_revision"])
        for key, r in store.table("kv").records.items()
    }


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_two_fsms_fed_the_same_entries_end_identical(ops: list) -> None:
    entries, _, _ = build(ops)
    one, two = fresh(), fresh()
    assert apply_all(one, entries) == apply_all(two, entries)
    assert state(one.store) == state(two.store)
    assert one.snapshot() == two.snapshot()


@settings(max_examples=150, deadline=None)
@given(OPS, st.data())
def test_a_snapshot_mid_sequence_changes_nothing(ops: list, data: st.DataObject) -> None:
    entries, _, _ = build(ops)
    cut = data.draw(st.integers(min_value=0, max_value=len(entries)), label="cut")

    straight = fresh()
    straight_results = apply_all(straight, entries)

    first = fresh()
    first_results = apply_all(first, entries[:cut])
    second = round_trip(first)
    assert state(second.store) == state(first.store)
    second_results = apply_all(second, entries[cut:])

    assert first_results + second_results == straight_results
    assert state(second.store) == state(straight.store)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_kv_follows_consul_check_and_set(ops: list) -> None:
    entries, expected, model = build(ops)
    fsm = fresh()
    shadow = KVModel()
    for entry, ok, (op, key, value, cas_kind) in zip(entries, expected, ops, strict=True):
        before = state(fsm.store)
        cas = shadow.resolve_cas(key, cas_kind)
        result = fsm.apply(entry)
        assert result["ok"] is ok, (op, key, cas, result)
        if op == "put":
            shadow.put(key, value, cas)
        elif op == "delete":
            shadow.delete(key, cas)
        else:
            shadow.delete_tree(key)
        if not ok:
            # a refused write changes nothing and does not bump the revision
            assert state(fsm.store) == before
            assert result["revision"] == before["revision"]
        elif op == "put":
            assert result["modify_index"] == fsm.store.revision == before["revision"] + 1
        assert kv_state(fsm.store) == shadow.keys
        assert fsm.store.revision == shadow.revision
    assert kv_state(fsm.store) == model.keys


def test_cas_zero_creates_only_when_absent() -> None:
    fsm = fresh()
    assert fsm.apply(kv_put("k", b"1", cas=0))["ok"] is True
    assert fsm.apply(kv_put("k", b"2", cas=0)) == {"ok": False, "revision": 1}
    assert fsm.store.get("kv", "k")["value"] == b"1"
    # delete with cas=0 never deletes (Consul: the index must be > 0)
    assert fsm.apply(kv_delete("k", cas=0))["ok"] is False
    assert fsm.store.get("kv", "k") is not None


def test_cas_n_writes_only_at_that_modify_index() -> None:
    fsm = fresh()
    fsm.apply(kv_put("k", b"1"))  # mod_revision 1
    fsm.apply(kv_put("other", b"x"))  # revision 2
    assert fsm.apply(kv_put("k", b"2", cas=2))["ok"] is False  # the store's, not the key's
    assert fsm.apply(kv_put("k", b"2", cas=1)) == {"ok": True, "modify_index": 3, "revision": 3}
    assert fsm.apply(kv_put("k", b"3", cas=1))["ok"] is False  # now stale
    assert fsm.apply(kv_put("new", b"1", cas=3))["ok"] is False  # absent key, cas != 0
    assert fsm.store.get("kv", "new") is None
    assert fsm.apply(kv_delete("k", cas=1))["ok"] is False
    assert fsm.apply(kv_delete("k", cas=3))["ok"] is True
    assert fsm.store.get("kv", "k") is None
    assert fsm.store.revision == 4
