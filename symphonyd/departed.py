"""What is left of a node that is no longer a member (it left, or was removed).

Its host is not the cluster's any more: nothing here touches it. Its records stay, and the
API shows them `orphaned` (`orphaned_view`) instead of the status its agent last wrote,
until someone removes them: `volume rm` and `instance rm` mark them `deleting` as usual,
and since no agent will ever act on them, the leader removes such records itself (the
files on that host, if it still has them, are left alone). Its services go once they hold
nothing: at once for a service that held nothing, else after its volumes and instances
were removed. A node that joins again under the same name has its records back.

A leader-only loop (`remove_departed`); the choice itself (`doomed`) is pure.
"""

from __future__ import annotations

import logging
from typing import Any

from symphonyd.errors import Conflict, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import now_rfc3339
from symphonyd.state import instances, lvm, nodes, references, services, volumes
from symphonyd.state.store import Store

__all__ = ["departed", "doomed", "orphaned_view", "remove_departed"]

log = logging.getLogger("symphonyd.departed")

LOOK_AGAIN = 60.0  # seconds between passes with nothing changing


def departed(store: Store, node: str | None) -> bool:
    """Whether a record's node was a member and is no longer one."""
    return node is not None and nodes.get(store, node) is None


def orphaned_view(view: dict[str, Any], what: str) -> dict[str, Any]:
    """A record of a departed node as the API shows it: `orphaned`, what its record said
    kept as `last_status`, and what to do about it."""
    view["last_status"] = view["status"]
    view["status"] = "orphaned"
    view["status_message"] = (
        f"node {view['node']} is no longer a member: `symphonyd {what} rm` removes this record "
        "(the files on that host are not touched)"
    )
    return view


def doomed(store: Store, now: str) -> list[Entry]:
    """The entries that remove what departed nodes leave (call with the store locked):
    their instances and volumes marked for removal, and their services that hold nothing.
    Instances first: removing one marks its root volume, removed at the next pass."""
    entries = [
        Entry(
            EntryType.INSTANCE_DELETE,
            {"id": r["id"], "keep_volumes": bool(r.get("keep_volumes")), "now": now},
        )
        for r in instances.all_instances(store)
        if r["status"] == "deleting" and departed(store, r["node"])
    ]
    entries += [
        Entry(EntryType.VOLUME_DELETE, {"id": v["id"]})
        for v in volumes.all_volumes(store)
        if v["status"] == "deleting" and departed(store, v["node"])
    ]
    entries += [
        Entry(EntryType.SERVICE_DELETE, {"id": s["id"]})
        for s in services.all_services(store)
        if departed(store, s["node"]) and references.service_holds(store, s["id"]) is None
    ]
    return entries


async def remove_departed(cluster: Cluster) -> None:
    """The leader's loop: remove what departed nodes leave, after every change of it
    (decided from a store known to be current: a new leader first commits a barrier)."""
    await cluster.barrier()
    while True:
        seen = cluster.store.revision
        with cluster.store.lock:
            entries = doomed(cluster.store, now_rfc3339())
        for entry in entries:
            try:
                await cluster.propose_ok(entry, idempotent=True)
                log.info("removed %s of a departed node", entry.body["id"])
            except Conflict as exc:  # changed meanwhile: looked at again next pass
                log.info("left %s of a departed node: %s", entry.body["id"], exc.message)
            except SymphonyError as exc:
                log.warning("%s of a departed node: %s", entry.body["id"], exc)
        tables = {"nodes", "instances", "volumes", "services", lvm.VGS, lvm.PVS}
        await cluster.wait_for_tables(tables, seen, LOOK_AGAIN)
