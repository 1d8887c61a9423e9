"""The admitting side of a join: a member checks a joining node's claim and its join
token and records the node `joining` (`admit`), adds it to Raft once it runs (`activate`),
and, as leader, removes the rows of joins that never got that far (`expire_joins`).
The joining side is `Membership.join` (membership.py); both hold one lock per node, so a
node never starts a membership change on top of an uncommitted one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from symphonyd.client import MemberCaller
from symphonyd.config import Settings
from symphonyd.errors import Conflict, NotFound, SymphonyError, Unavailable
from symphonyd.identity import IdentityFiles
from symphonyd.keyring import Keyring
from symphonyd.raft.cluster import Cluster, raise_for_result
from symphonyd.raft.entries import SCHEMA_VERSION, Entry, EntryType
from symphonyd.security import new_id, now_rfc3339, parse_rfc3339, sha256_hex
from symphonyd.state import nodes, tokens

log = logging.getLogger("symphonyd.membership")

JOIN_PATIENCE = 3600.0  # s a join row waits to become a member when its token has no expiry
JOIN_GRACE = 15.0  # ... and at least this long, whatever the token says (`activate` takes it)


class NodeWiring(Protocol):
    """What membership needs of the node it changes; the daemon provides it.

    `start_raft` reads the secret, the certificate and the node credential written by
    membership, so `secret`, `fingerprint`, `credential` and `caller` are set while Raft
    runs; `stop_raft` forgets them again."""

    @property
    def cluster(self) -> Cluster | None: ...

    @property
    def secret(self) -> str | None: ...

    @property
    def fingerprint(self) -> str | None: ...

    @property
    def credential(self) -> str | None: ...

    @property
    def keyring(self) -> Keyring | None: ...

    @property
    def caller(self) -> MemberCaller | None: ...

    def require_cluster(self) -> Cluster: ...

    def start_raft(self, peers: list[str]) -> None: ...

    async def start_https(self) -> None: ...

    async def stop_raft(self) -> None: ...


class Admissions:
    """Letting joining nodes in, on a member."""

    def __init__(
        self, settings: Settings, node: NodeWiring, files: IdentityFiles, lock: asyncio.Lock
    ) -> None:
        self.settings = settings
        self.node = node
        self.files = files
        self._lock = lock

    async def admit(self, token_id: str, secret: str, record: dict[str, Any]) -> dict[str, Any]:
        """Admit a joining node whose row `record` the API checked (api/cluster.py)."""
        cluster = self.node.require_cluster()
        now = now_rfc3339()
        secret_sha = sha256_hex(secret)
        with cluster.store.lock:
            token = tokens.get(cluster.store, token_id)
            problem = tokens.check_usable(token, secret_sha, now)
            problem = problem or nodes.check_addable(cluster.store, record)
            in_use = max(  # what the members speak (a row still joining claims nothing yet)
                (
                    int(n.get("schema", 1))
                    for n in nodes.all_nodes(cluster.store)
                    if n.get("status") != "joining"
                ),
                default=1,
            )
        if not problem and record["schema"] < in_use:
            problem = (
                "conflict",
                f"this cluster already speaks schema {in_use}; the joining "
                f"node speaks {record['schema']}: install the current symphonyd on it",
            )
        if not problem and record["schema"] > SCHEMA_VERSION + 1:
            problem = (
                "invalid",
                f"the joining node claims schema {record['schema']}; this cluster's symphonyd "
                f"knows schema {SCHEMA_VERSION}, and a node at most one version ahead may join",
            )
        if problem:
            raise_for_result({"ok": False, "error": {"code": problem[0], "message": problem[1]}})
        # a row that never becomes a member goes when its token would have, but never
        # sooner than JOIN_GRACE from now (a join admitted just before its token expires)
        soonest = now_rfc3339(datetime.now(UTC) + timedelta(seconds=JOIN_GRACE))
        fallback = now_rfc3339(datetime.now(UTC) + timedelta(seconds=JOIN_PATIENCE))
        expires_at = max((token or {}).get("expires_at") or fallback, soonest)
        record.update(
            {"id": new_id(), "status": "joining", "created_at": now, "expires_at": expires_at}
        )
        async with self._lock:
            await cluster.propose_ok(
                Entry(
                    EntryType.NODE_ADD,
                    {
                        "node": record,
                        "token": {"id": token_id, "secret_sha256": secret_sha, "now": now},
                    },
                )
            )
        with open(self.settings.path("tls", "cert.pem")) as f:
            cert_pem = f.read()
        with open(self.settings.path("tls", "key.pem")) as f:
            key_pem = f.read()
        log.info("admitted node %s at %s", record["name"], record["raft_addr"])
        return {
            "cluster_id": self.files.cluster_id(),
            "secret": self.node.secret,
            "retired_secrets": self.node.keyring.retired if self.node.keyring else [],
            "cert_pem": cert_pem,
            "key_pem": key_pem,
            "members": sorted(cluster.raft_members() | {record["raft_addr"]}),
            "node": record,
        }

    async def expire_joins(self) -> None:
        """The leader's loop: remove the rows of joins that never made their node a Raft
        member by the time their token expired (someone used a token and went away, or a
        join that crashed half-way)."""
        cluster = self.node.require_cluster()
        while True:
            seen = cluster.store.revision
            now = datetime.now(UTC)
            members = cluster.raft_members()
            with cluster.store.lock:
                joining = [
                    dict(n)
                    for n in nodes.all_nodes(cluster.store)
                    if n.get("status") == "joining" and n["raft_addr"] not in members
                ]
            next_in = JOIN_PATIENCE
            for row in joining:
                left = _seconds_until(row.get("expires_at"), now)
                if left > 0:
                    next_in = min(next_in, left)
                    continue
                try:
                    async with self._lock:  # not while `activate` adds it to Raft
                        if row["raft_addr"] in cluster.raft_members():
                            continue
                        entry = Entry(EntryType.NODE_REMOVE, {"name": row["name"]})
                        await cluster.propose_ok(entry)
                    log.warning("node %s did not join before its token expired", row["name"])
                except SymphonyError as exc:
                    log.warning("join of %s: %s", row["name"], exc)
            await cluster.wait_for_tables({"nodes"}, seen, max(next_in + 0.5, 1.0))

    async def activate(self, name: str) -> dict[str, Any]:
        """Add a joining node to the Raft membership, now that it runs (see `join`).

        Holds the membership lock until the change commits, so this node never starts a
        second change on top of an uncommitted one."""
        cluster = self.node.require_cluster()
        async with self._lock:  # read under it: `expire_joins` may be removing the row
            with cluster.store.lock:
                record = nodes.get(cluster.store, name)
            if record is None:
                raise NotFound(f"no node named {name!r} is joining")
            if record["raft_addr"] not in cluster.raft_members():
                state = await change_membership(cluster, "add", record["raft_addr"], wait=20.0)
                if state != "committed":
                    raise Unavailable(f"adding {name} to Raft did not commit in time")
        log.info("node %s (%s) is a Raft member", name, record["raft_addr"])
        return {"node": name, "members": sorted(cluster.raft_members() | {record["raft_addr"]})}


async def change_membership(cluster: Cluster, op: str, raft_addr: str, wait: float) -> str:
    """A Raft membership change, retried while another change is still committing."""
    deadline = time.monotonic() + 15.0
    while True:
        try:
            return await cluster.change_membership(op, raft_addr, wait)
        except Conflict:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _seconds_until(stamp: Any, now: datetime) -> float:
    """Seconds from `now` to an RFC 3339 time (0 for a missing or unreadable one)."""
    when = parse_rfc3339(stamp)
    return 0.0 if when is None else (when - now).total_seconds()
