"""Claims: a node takes a record placed on it for its work (`RECORD_CLAIM`).

A claim moves a record's status `from_status -> to_status` (a volume, physical volume,
volume group or instance `pending -> creating`), only while its status is still
`from_status` and it is placed on the claiming node: two nodes never act on one record,
and a claim cannot change anything but the status, which a free `*_UPDATE` patch could.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Store, failure

CLAIMABLE = frozenset({"volumes", "pvs", "vgs", "instances"})


def claim(
    store: Store,
    table: str,
    record_id: str,
    node: str,
    from_status: str,
    to_status: str,
    at: str,
) -> dict[str, Any]:
    if table not in CLAIMABLE:
        return failure("invalid", f"records of {table!r} are not claimed")
    old = store.get(table, record_id)
    if old is None:
        return failure("not_found", f"no record {record_id} in {table}")
    if old.get("node") != node:
        return failure("conflict", f"{record_id} is on node {old.get('node')}, not {node}")
    if old["status"] != from_status:
        return failure("conflict", f"{record_id} is {old['status']}, not {from_status}")
    record = store.put(table, record_id, {**old, "status": to_status, "updated_at": at})
    return {"ok": True, "record": record}
