"""The nodes table: members of the cluster, keyed by name.

A record: name, id, address (how peers reach the host), api_port, raft_port, raft_addr
(`address:raft_port`, pysyncobj's id for the node), status (`joining`, `active`),
version, schema, created_at, and credential_sha256 (SHA-256 of the secret of the node's
own API credential; absent in rows of nodes from before node credentials).
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store, failure

TABLE = "nodes"


def get(store: Store, name: str) -> Record | None:
    return store.get(TABLE, name)


def all_nodes(store: Store) -> list[Record]:
    return store.table(TABLE).values()


def by_raft_addr(store: Store, raft_addr: str) -> Record | None:
    for record in all_nodes(store):
        if record["raft_addr"] == raft_addr:
            return record
    return None


def check_addable(store: Store, node: dict[str, Any]) -> tuple[str, str] | None:
    """Why `node` cannot join now as (code, message), or None if it can."""
    if get(store, node["name"]) is not None:
        return ("conflict", f"a node named {node['name']!r} is already a member")
    if by_raft_addr(store, node["raft_addr"]) is not None:
        return ("conflict", f"address {node['raft_addr']} is already used by a member")
    return None


def add(store: Store, node: dict[str, Any]) -> dict[str, Any]:
    problem = check_addable(store, node)
    if problem:
        return failure(*problem)
    record = store.put(TABLE, node["name"], node)
    return {"ok": True, "node": record}


def update(store: Store, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    old = get(store, name)
    if old is None:
        return failure("not_found", f"no node named {name!r}")
    return {"ok": True, "node": store.put(TABLE, name, {**old, **fields})}


def remove(store: Store, name: str) -> dict[str, Any]:
    if store.delete(TABLE, name) is None:
        return failure("not_found", f"no node named {name!r}")
    return {"ok": True}
