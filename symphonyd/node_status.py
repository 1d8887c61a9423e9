"""The status view: what this node answers at `GET /v1/cluster` (and what `/v1/health`,
`/v1/nodes` and the KV index headers take from it): its version, uptime and image copier,
and, once it belongs to a cluster, its view of the cluster (leader, quorum, Raft term and
indexes, every member with its role and health).

It only reads: the Raft node's status and the store, under the store's lock. It must not
propose entries, wait, touch files or the network, or change anything it is given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from symphonyd import __version__, allocator
from symphonyd.client import MemberCaller
from symphonyd.config import Settings
from symphonyd.errors import SymphonyError
from symphonyd.image import copier
from symphonyd.raft.cluster import Cluster
from symphonyd.state import cluster as cluster_table
from symphonyd.state import nodes

__all__ = ["node_status"]


def node_status(
    settings: Settings,
    *,
    identity: Mapping[str, Any] | None,
    cluster: Cluster | None,
    fingerprint: str | None,
    started_at: float,
) -> dict[str, Any]:
    """This node and its view of the cluster, as plain data (the /v1/cluster answer).

    `identity` is this node's identity.json (None before init/join), `fingerprint` the
    cluster certificate's as this node read it, `started_at` the process start (epoch s).
    """
    base: dict[str, Any] = {
        "version": __version__,
        "image_copier": copier.describe(),
        "malloc_mmap_threshold": allocator.mmap_threshold,  # symphonyd/allocator.py
        "node": settings.name,
        "initialized": identity is not None,
        "uptime_s": round(time.time() - started_at, 1),
    }
    if cluster is None or identity is None:
        return {**base, "cluster_id": None, "members": [], "has_quorum": False}
    raft = cluster.status()
    store = cluster.store
    with store.lock:
        records = nodes.all_nodes(store)
        info = cluster_table.get(store) or {}
        revision = store.revision
    by_addr = {r["raft_addr"]: r for r in records}
    peers = raft.get("peers", {})
    leader_addr = raft.get("leader")
    if leader_addr not in (None, settings.raft_addr) and not peers.get(leader_addr, {}).get(
        "connected"
    ):
        leader_addr = None  # pysyncobj remembers a leader it can no longer reach
    if not raft.get("has_quorum"):
        leader_addr = None  # a leader cut off from the majority leads nothing
    members = []
    for addr in sorted(cluster.raft_members() | set(by_addr)):
        record = by_addr.get(addr, {})
        if addr == settings.raft_addr:
            health = "online"
        else:
            peer = peers.get(addr, {})
            heard_ago = peer.get("heard_ago")
            # a leader hears every member each heartbeat, a node without one hears their
            # pre-votes: silence there is a partition (a follower hears only the leader)
            listening = raft.get("role") == "leader" or raft.get("leader") is None
            silent = listening and (heard_ago is None or heard_ago > raft.get("heard_window", 1.5))
            health = "online" if peer.get("connected") and not silent else "unreachable"
        members.append(
            {
                "name": record.get("name", "?"),
                "raft_addr": addr,
                "api": f"{record['address']}:{record['api_port']}" if record else None,
                "role": "leader" if leader_addr == addr else "follower",
                "health": health,
                "status": record.get("status", "unknown"),
                "version": record.get("version"),
                "schema": record.get("schema", 1),
                "cordoned": bool(record.get("cordoned", False)),
            }
        )
    members.sort(key=lambda m: (m["name"], m["raft_addr"]))
    leader = by_addr.get(leader_addr or "", {}).get("name")
    return {
        **base,
        "cluster_id": identity["cluster_id"],
        "fingerprint": fingerprint or info.get("fingerprint"),
        "role": raft.get("role"),
        "leader": leader,
        "leader_raft_addr": leader_addr,
        "has_quorum": bool(raft.get("has_quorum")) and leader_addr is not None,
        "term": raft.get("term"),
        "commit_index": raft.get("commit_index"),
        "last_applied": raft.get("last_applied"),
        "revision": revision,
        "members": members,
        "raft": raft,
    }


LEADER_VIEW_TIMEOUT = 2.0


async def leader_view(cluster: Cluster | None, caller: MemberCaller | None) -> set[str] | None:
    """The members the leader reaches (`online` in its `/v1/cluster`), asked of it with
    this node's credential; None when there is no other leader to ask or it does not
    answer as leader within LEADER_VIEW_TIMEOUT."""
    if cluster is None or caller is None:
        return None
    raft = cluster.status()
    leader_addr = raft.get("leader")
    with cluster.store.lock:
        member = next(
            (dict(n) for n in nodes.all_nodes(cluster.store) if n["raft_addr"] == leader_addr),
            None,
        )
    if member is None or leader_addr == raft.get("self"):
        return None
    try:
        answer = await caller.client(member, timeout=LEADER_VIEW_TIMEOUT).request(
            "GET", "/v1/cluster"
        )
    except SymphonyError:
        return None
    if not isinstance(answer, dict) or answer.get("role") != "leader":
        return None
    return {m["name"] for m in answer.get("members", []) if m.get("health") == "online"}
