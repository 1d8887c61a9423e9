"""The finite state machine: the whole contract between Raft and the store.

    apply(data)    -> result   Deterministic: the same entries in the same order give the
                               same store and the same results on every node. No I/O, no
                               clock, no randomness. A refused entry (stale CAS, used token)
                               is applied as a no-op and returns {"ok": False, ...}.
    snapshot()     -> bytes    The whole store at the last applied entry, in our own
                               serializer (msgpack, versioned header, tagged records).
    restore(bytes)             Throws away the current store and loads a snapshot, through
                               the same upgrade path as entries.

One small `apply_<verb>_<noun>` per entry type decodes the body and makes one store call.
Entry types this version does not know are refused with a clear message, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgpack

from symphonyd.raft.entries import SCHEMA_VERSION, Entry, EntryType, body_version, decode
from symphonyd.state import (
    claims,
    cluster,
    images,
    instances,
    kv,
    lifecycles,
    lvm,
    moves,
    nodes,
    references,
    services,
    tokens,
    volumes,
)
from symphonyd.state.store import Store, failure

log = logging.getLogger("symphonyd.raft.fsm")

SNAPSHOT_MAGIC = "symphonyd-snapshot"
SNAPSHOT_FORMAT = 1

Result = dict[str, Any]


def apply_barrier(store: Store, body: dict[str, Any]) -> Result:
    return {"ok": True}


def apply_cluster_init(store: Store, body: dict[str, Any]) -> Result:
    return cluster.init(store, body["cluster"])


def apply_cluster_config(store: Store, body: dict[str, Any]) -> Result:
    return cluster.set_config(store, body["key"], body["value"])


def apply_node_add(store: Store, body: dict[str, Any]) -> Result:
    return references.add_node_with_token(store, body["node"], body.get("token"))


def apply_node_update(store: Store, body: dict[str, Any]) -> Result:
    return nodes.update(store, body["name"], body["fields"])


def apply_node_remove(store: Store, body: dict[str, Any]) -> Result:
    return nodes.remove(store, body["name"])


def apply_token_create(store: Store, body: dict[str, Any]) -> Result:
    return tokens.create(store, body["token"])


def apply_token_use(store: Store, body: dict[str, Any]) -> Result:
    return tokens.use(store, body["id"], body["secret_sha256"], body["now"], body["used_by"])


def apply_token_delete(store: Store, body: dict[str, Any]) -> Result:
    return tokens.delete(store, body["id"])


def apply_kv_put(store: Store, body: dict[str, Any]) -> Result:
    return kv.put(store, body["key"], body["value"], body.get("flags", 0), body.get("cas"))


def apply_kv_delete(store: Store, body: dict[str, Any]) -> Result:
    return kv.delete(store, body["key"], body.get("recurse", False), body.get("cas"))


def apply_image_create(store: Store, body: dict[str, Any]) -> Result:
    return images.create(store, body["image"])


def apply_image_update(store: Store, body: dict[str, Any]) -> Result:
    return images.update(store, body["id"], body["fields"], body.get("expect_status"))


def apply_image_delete(store: Store, body: dict[str, Any]) -> Result:
    return references.delete_image(store, body["id"])


def apply_service_create(store: Store, body: dict[str, Any]) -> Result:
    return services.create(store, body["service"])


def apply_service_update(store: Store, body: dict[str, Any]) -> Result:
    return services.update(store, body["id"], body["fields"])


def apply_service_delete(store: Store, body: dict[str, Any]) -> Result:
    return references.delete_service(store, body["id"])


def apply_volume_create(store: Store, body: dict[str, Any]) -> Result:
    return volumes.create(store, body["volume"])


def apply_volume_update(store: Store, body: dict[str, Any]) -> Result:
    return references.update_volume(store, body["id"], body["fields"], body.get("expect_status"))


def apply_volume_delete(store: Store, body: dict[str, Any]) -> Result:
    return volumes.delete(store, body["id"])


def apply_volume_place(store: Store, body: dict[str, Any]) -> Result:
    return volumes.place(store, body["id"], body["node"], body["service_id"], body["pool"])


def apply_pv_create(store: Store, body: dict[str, Any]) -> Result:
    return lvm.create_pv(store, body["pv"])


def apply_pv_update(store: Store, body: dict[str, Any]) -> Result:
    return lvm.update(store, lvm.PVS, body["id"], body["fields"], body.get("expect_status"))


def apply_pv_delete(store: Store, body: dict[str, Any]) -> Result:
    return lvm.delete(store, lvm.PVS, body["id"])


def apply_vg_create(store: Store, body: dict[str, Any]) -> Result:
    return lvm.create_vg(store, body["vg"])


def apply_vg_update(store: Store, body: dict[str, Any]) -> Result:
    return lvm.update(store, lvm.VGS, body["id"], body["fields"], body.get("expect_status"))


def apply_vg_delete(store: Store, body: dict[str, Any]) -> Result:
    return lvm.delete(store, lvm.VGS, body["id"])


def apply_image_add_holder(store: Store, body: dict[str, Any]) -> Result:
    return images.add_holder(store, body["id"], body["node"], body["now"])


def apply_image_remove_holder(store: Store, body: dict[str, Any]) -> Result:
    return images.remove_holder(store, body["id"], body["node"], body["now"])


def apply_lifecycle_catalog(store: Store, body: dict[str, Any]) -> Result:
    return lifecycles.set_catalog(store, body["catalog"])


def apply_deployment_create(store: Store, body: dict[str, Any]) -> Result:
    return lifecycles.create_deployment(store, body["deployment"])


def apply_deployment_step(store: Store, body: dict[str, Any]) -> Result:
    return lifecycles.update_step(store, body)


def apply_deployment_update(store: Store, body: dict[str, Any]) -> Result:
    return lifecycles.update_deployment(store, body["id"], body["fields"])


def apply_deployment_delete(store: Store, body: dict[str, Any]) -> Result:
    return lifecycles.delete_deployment(store, body["id"])


def apply_instance_create(store: Store, body: dict[str, Any]) -> Result:
    return references.create_instance(store, body["instance"], body.get("placing"))


def apply_instance_update(store: Store, body: dict[str, Any]) -> Result:
    return instances.update(store, body["id"], body["fields"], body.get("expect_status"))


def apply_instance_delete(store: Store, body: dict[str, Any]) -> Result:
    return references.delete_instance(store, body["id"], bool(body["keep_volumes"]), body["now"])


def apply_instance_place(store: Store, body: dict[str, Any]) -> Result:
    return references.place_instance(
        store, body["id"], body["node"], body["service_id"], body["root_volume"]
    )


def apply_instance_attach(store: Store, body: dict[str, Any]) -> Result:
    return references.attach_volume(store, body["id"], body["volume_id"], body["now"])


def apply_instance_detach(store: Store, body: dict[str, Any]) -> Result:
    return references.detach_volume(store, body["id"], body["volume_id"], body["now"])


def apply_instance_move(store: Store, body: dict[str, Any]) -> Result:
    return moves.move_step(store, body)


def apply_record_claim(store: Store, body: dict[str, Any]) -> Result:
    return claims.claim(
        store,
        body["table"],
        body["id"],
        body["node"],
        body["from_status"],
        body["to_status"],
        body["at"],
    )


APPLIERS: dict[int, Callable[[Store, dict[str, Any]], Result]] = {
    EntryType.BARRIER: apply_barrier,
    EntryType.CLUSTER_INIT: apply_cluster_init,
    EntryType.CLUSTER_CONFIG: apply_cluster_config,
    EntryType.NODE_ADD: apply_node_add,
    EntryType.NODE_UPDATE: apply_node_update,
    EntryType.NODE_REMOVE: apply_node_remove,
    EntryType.TOKEN_CREATE: apply_token_create,
    EntryType.TOKEN_USE: apply_token_use,
    EntryType.TOKEN_DELETE: apply_token_delete,
    EntryType.KV_PUT: apply_kv_put,
    EntryType.KV_DELETE: apply_kv_delete,
    EntryType.IMAGE_CREATE: apply_image_create,
    EntryType.IMAGE_UPDATE: apply_image_update,
    EntryType.IMAGE_DELETE: apply_image_delete,
    EntryType.IMAGE_ADD_HOLDER: apply_image_add_holder,
    EntryType.IMAGE_REMOVE_HOLDER: apply_image_remove_holder,
    EntryType.SERVICE_CREATE: apply_service_create,
    EntryType.SERVICE_UPDATE: apply_service_update,
    EntryType.SERVICE_DELETE: apply_service_delete,
    EntryType.VOLUME_CREATE: apply_volume_create,
    EntryType.VOLUME_UPDATE: apply_volume_update,
    EntryType.VOLUME_DELETE: apply_volume_delete,
    EntryType.VOLUME_PLACE: apply_volume_place,
    EntryType.PV_CREATE: apply_pv_create,
    EntryType.PV_UPDATE: apply_pv_update,
    EntryType.PV_DELETE: apply_pv_delete,
    EntryType.VG_CREATE: apply_vg_create,
    EntryType.VG_UPDATE: apply_vg_update,
    EntryType.VG_DELETE: apply_vg_delete,
    EntryType.LIFECYCLE_CATALOG: apply_lifecycle_catalog,
    EntryType.DEPLOYMENT_CREATE: apply_deployment_create,
    EntryType.DEPLOYMENT_STEP: apply_deployment_step,
    EntryType.DEPLOYMENT_UPDATE: apply_deployment_update,
    EntryType.DEPLOYMENT_DELETE: apply_deployment_delete,
    EntryType.INSTANCE_CREATE: apply_instance_create,
    EntryType.INSTANCE_UPDATE: apply_instance_update,
    EntryType.INSTANCE_DELETE: apply_instance_delete,
    EntryType.INSTANCE_PLACE: apply_instance_place,
    EntryType.INSTANCE_ATTACH: apply_instance_attach,
    EntryType.INSTANCE_DETACH: apply_instance_detach,
    EntryType.INSTANCE_MOVE: apply_instance_move,
    EntryType.RECORD_CLAIM: apply_record_claim,
}


def upgrade_body(entry: Entry) -> dict[str, Any]:
    """Bring an entry body of an older schema version to the current one."""
    return entry.body


class FSM:
    """Applies log entries to a store; snapshots and restores it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.applied = 0
        self.refused_unknown = 0

    def apply(self, data: bytes) -> Result:
        with self.store.lock:
            return self._apply(data)

    def _apply(self, data: bytes) -> Result:
        try:
            entry = decode(data)
        except Exception as exc:
            log.error("refusing undecodable log entry: %s", exc)
            return failure("invalid", str(exc))
        applier = APPLIERS.get(entry.type)
        if applier is None or entry.version > body_version(entry.type):
            self.refused_unknown += 1
            message = (
                f"log entry type {entry.type} (body version {entry.version}) is unknown to "
                f"this node (symphonyd schema {SCHEMA_VERSION}): upgrade this node"
            )
            log.error("%s", message)
            return failure("unsupported_entry", message)
        try:
            result = applier(self.store, upgrade_body(entry))
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed body is refused the same way on every node (it is in the log).
            log.error("refusing malformed entry of type %s: %r", entry.type, exc)
            self.store.rollback()
            result = failure("invalid", f"malformed entry body: {exc!r}")
        revision = self.store.commit()
        self.applied += 1
        result.setdefault("revision", revision)
        return result

    def snapshot(self) -> bytes:
        """The whole state as bytes (`capture`, then `encode`)."""
        return b"".join(self.encode(self.capture()))

    def capture(self) -> Any:
        """The state as it is now, cheaply (on the Raft thread): the revision and a shallow
        copy of each table's records. Records are never changed once stored (appliers
        build new ones), so `encode` may run later, on another thread, while entries go
        on applying."""
        store = self.store
        return store.revision, [(name, dict(t.records)) for name, t in store.tables.items()]

    @staticmethod
    def encode(captured: Any, batch: int = 500) -> list[bytes]:
        """The captured state as msgpack, in chunks of `batch` records: the bytes of
        `packb([header, {"revision": ..., "records": [[table, key, record], ...]}])`
        (what `restore` reads), made in short calls so that a thread encoding a large
        store lets the Raft thread run between them (msgpack holds the GIL)."""
        revision, tables = captured
        header = {"magic": SNAPSHOT_MAGIC, "format": SNAPSHOT_FORMAT, "schema": SCHEMA_VERSION}
        packer = msgpack.Packer(use_bin_type=True)
        chunks = [
            packer.pack_array_header(2),
            packer.pack(header),
            packer.pack_map_header(2),
            packer.pack("revision"),
            packer.pack(revision),
            packer.pack("records"),
            packer.pack_array_header(sum(len(records) for _name, records in tables)),
        ]
        gather = msgpack.Packer(use_bin_type=True, autoreset=False)
        for name, records in tables:
            items = list(records.items())
            for start in range(0, len(items), batch):
                for key, record in items[start : start + batch]:
                    gather.pack([name, key, record])
                chunks.append(gather.bytes())
                gather.reset()
        return chunks

    def restore(self, data: bytes) -> None:
        header, body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if header.get("magic") != SNAPSHOT_MAGIC or header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a symphonyd snapshot of a known format")
        # A newer node's snapshot loads too: tables this code does not know are kept as
        # they are (and written back in its own snapshots), never interpreted.
        with self.store.lock:
            self.store.load(body)
