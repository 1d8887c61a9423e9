"""This node's membership of a cluster, and the cluster's admin and join tokens.

The verbs: `init` (bootstrap a one-node cluster), `join` (this node joins using a token),
`admit` and `activate` (a member lets a new node in, then adds it to Raft), `remove_node`
and `leave`, and `create_token`. They live together because they touch files as well as
Raft: identity.json (which cluster this node belongs to, and the peers a restart dials),
the cluster secret and the TLS key pair. Everything they decide goes through the log; one
lock keeps this node from starting a membership change on top of an uncommitted one.
`remember_members` keeps identity.json's peers and this node's version record current.

It must not build or start the node's parts itself: it asks the daemon (`NodeWiring`) to
start and stop Raft and the HTTPS site. It takes and returns plain data, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from symphonyd import __version__
from symphonyd.client import MemberCaller, NodeClient
from symphonyd.config import Settings
from symphonyd.durable import write_file_durably
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError, Unavailable
from symphonyd.keyring import Keyring
from symphonyd.raft.cluster import Cluster, raise_for_result
from symphonyd.raft.entries import SCHEMA_VERSION, Entry, EntryType
from symphonyd.security import (
    JoinToken,
    credential_sha256,
    decode_join_token,
    fingerprint_pem,
    make_certificate,
    new_api_token,
    new_id,
    new_node_credential,
    new_secret,
    now_rfc3339,
    parse_rfc3339,
    sha256_hex,
    shared_node_credential,
)
from symphonyd.state import nodes, tokens
from symphonyd.validation import check_name

__all__ = ["Membership", "NodeWiring", "check_port_free"]

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


class Membership:
    """The membership verbs of one node, and its identity.json."""

    def __init__(self, settings: Settings, node: NodeWiring) -> None:
        self.settings = settings
        self.node = node
        self.identity: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._identity_save_failed = False  # said once, until a save works again

    # -- files -------------------------------------------------------------------------------

    @property
    def identity_path(self) -> str:
        return self.settings.path("identity.json")

    def load_identity(self) -> dict[str, Any] | None:
        """Read identity.json (None: this node belongs to no cluster yet) into `identity`."""
        self.identity = self._read_identity()
        return self.identity

    def _read_identity(self) -> dict[str, Any] | None:
        try:
            with open(self.identity_path) as f:
                identity = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise Invalid(f"{self.identity_path} is damaged: {exc}") from exc
        if identity.get("raft_addr") != self.settings.raft_addr:
            raise Invalid(
                f"this data dir belongs to node {identity.get('name')!r} at raft address "
                f"{identity.get('raft_addr')}, but settings give {self.settings.raft_addr}: "
                "start it with its original --address/--raft-port"
            )
        if identity.get("name") != self.settings.name:
            log.info("node name comes from identity: %s", identity.get("name"))
        return dict(identity)

    def _save_identity(self, identity: dict[str, Any]) -> None:
        write_file_durably(self.identity_path, json.dumps(identity, indent=2).encode())
        self.identity = identity

    def _wipe_cluster_files(self) -> None:
        for name in ("identity.json", "secret", "secret.keys", "credential"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.path(name))
        for name in ("raft", "tls"):
            shutil.rmtree(self.settings.path(name), ignore_errors=True)

    def _write_cluster_files(
        self, keyring: Keyring, cert_pem: bytes, key_pem: bytes, credential: str
    ) -> None:
        os.makedirs(self.settings.path("tls"), mode=0o700, exist_ok=True)
        keyring.save(self.settings.data_dir)
        write_file_durably(self.settings.path("credential"), credential.encode())
        write_file_durably(self.settings.path("tls", "cert.pem"), cert_pem, mode=0o644)
        write_file_durably(self.settings.path("tls", "key.pem"), key_pem)

    async def _forget_cluster(self) -> None:
        """Undo a membership: stop Raft and the HTTPS site, delete the cluster's files."""
        await self.node.stop_raft()
        self._wipe_cluster_files()
        self.identity = None

    def _cluster_id(self) -> str:
        assert self.identity
        return str(self.identity["cluster_id"])

    def node_info(self) -> dict[str, Any]:
        """This node as the cluster records it (what a join sends to the member)."""
        s = self.settings
        return {
            "name": s.name,
            "address": s.address,
            "api_port": s.api_port,
            "raft_port": s.raft_port,
            "raft_addr": s.raft_addr,
            "version": __version__,
            "schema": SCHEMA_VERSION,
        }

    # -- keeping records current ---------------------------------------------------------------

    async def remember_members(self) -> None:
        """Keep identity.json's peer list current, so a restart dials today's members, and
        this node's record telling the version it runs (after an upgrade)."""
        while True:
            await asyncio.sleep(2.0)
            cluster, identity = self.node.cluster, self.identity
            if cluster is None or identity is None:
                continue
            await self._record_version(cluster)
            peers = sorted(cluster.raft_members() - {self.settings.raft_addr})
            if peers != identity.get("peers"):
                try:
                    await asyncio.to_thread(self._save_identity, {**identity, "peers": peers})
                except OSError as exc:  # a full disk: tried again in 2 s
                    if not self._identity_save_failed:
                        log.warning("cannot save the member list in %s: %s (will retry)",
                                    self.identity_path, exc.strerror or exc)  # fmt: skip
                    self._identity_save_failed = True
                else:
                    self._identity_save_failed = False

    async def _record_version(self, cluster: Cluster) -> None:
        """Keep this node's row telling the version it runs and holding its credential (a
        node from before node credentials records the one it made at start)."""
        with cluster.store.lock:
            record = nodes.get(cluster.store, self.settings.name)
        running: dict[str, Any] = {"version": __version__, "schema": SCHEMA_VERSION}
        if self.node.credential is not None:
            running["credential_sha256"] = credential_sha256(self.node.credential)
        if record is None or not cluster.has_leader():
            return
        if {k: record.get(k) for k in running} != running:
            with contextlib.suppress(SymphonyError):
                await cluster.propose(
                    Entry(
                        EntryType.NODE_UPDATE,
                        {
                            "name": self.settings.name,
                            "fields": running,
                        },
                    ),
                    idempotent=True,
                )
                log.info(
                    "recorded that this node runs symphonyd %s (schema %d) and its credential",
                    __version__,
                    SCHEMA_VERSION,
                )

    # -- init --------------------------------------------------------------------------------

    async def _wait_for_leader(self, timeout: float) -> None:
        cluster = self.node.require_cluster()
        deadline = time.monotonic() + timeout
        while not cluster.has_leader():
            if time.monotonic() > deadline:
                raise Unavailable(cluster.no_quorum_message())
            await asyncio.sleep(0.05)

    async def init(self, token_expires_in: float | None = None) -> dict[str, Any]:
        """Bootstrap a one-node cluster; its first admin token expires after
        `token_expires_in` seconds (None: never)."""
        async with self._lock:
            if self.identity:
                raise Conflict(
                    f"this node already belongs to cluster {self.identity['cluster_id']}"
                )
            check_name(self.settings.name, what="node name")
            self._wipe_cluster_files()
            cluster_id = new_id()
            cert_pem, key_pem = make_certificate(cluster_id)
            credential, credential_sha = new_node_credential(self.settings.name)
            self._write_cluster_files(Keyring(new_secret()), cert_pem, key_pem, credential)
            try:
                self.node.start_raft([])
                await self._wait_for_leader(15.0)
                cluster = self.node.require_cluster()
                created = datetime.now(UTC)
                now = now_rfc3339(created)
                expires_at = None
                if token_expires_in is not None:
                    expires_at = now_rfc3339(created + timedelta(seconds=token_expires_in))
                token_id, token_text, secret_sha = new_api_token()
                info = {
                    "id": cluster_id,
                    "created_at": now,
                    "fingerprint": fingerprint_pem(cert_pem),
                }
                me = {
                    **self.node_info(),
                    "credential_sha256": credential_sha,
                    "id": new_id(),
                    "status": "active",
                    "created_at": now,
                }
                for entry in (
                    Entry(EntryType.CLUSTER_INIT, {"cluster": info}),
                    Entry(EntryType.NODE_ADD, {"node": me}),
                    Entry(
                        EntryType.TOKEN_CREATE,
                        {
                            "token": {
                                "id": token_id,
                                "kind": "admin",
                                "secret_sha256": secret_sha,
                                "created_at": now,
                                "expires_at": expires_at,
                                "scope": "admin",
                                "description": "created by init",
                            }
                        },
                    ),
                ):
                    await cluster.propose_ok(entry)
                self._save_identity(
                    {
                        "name": self.settings.name,
                        "cluster_id": cluster_id,
                        "raft_addr": self.settings.raft_addr,
                        "peers": [],
                        "created_at": now,
                    }
                )
                await self.node.start_https()
            except BaseException:
                await self._forget_cluster()
                raise
            log.info("initialised cluster %s", cluster_id)
            return {
                "cluster_id": cluster_id,
                "node": self.settings.name,
                "admin_token": token_text,
                "admin_token_expires_at": expires_at,
                "fingerprint": info["fingerprint"],
                "api": f"https://{self.settings.address}:{self.settings.api_port}",
            }

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(
        self, kind: str, expires_in: float | None, description: str, scope: str = "admin"
    ) -> dict[str, Any]:
        cluster = self.node.require_cluster()
        if kind not in ("join", "admin"):
            raise Invalid("token kind must be 'join' or 'admin'")
        if scope != "admin":  # a node of schema 6 would take it for an admin token
            cluster.require_schema_level(7, f"a token of scope {scope}")
        created = datetime.now(UTC)
        expires_at = None
        if expires_in is not None:
            expires_at = now_rfc3339(datetime.fromtimestamp(created.timestamp() + expires_in, UTC))
        token_id, text, secret_sha = new_api_token()
        record = {
            "id": token_id,
            "kind": kind,
            "secret_sha256": secret_sha,
            "created_at": now_rfc3339(created),
            "expires_at": expires_at,
            "description": description,
        }
        if kind == "admin":
            record["scope"] = scope
        await cluster.propose_ok(Entry(EntryType.TOKEN_CREATE, {"token": record}))
        if kind == "join":
            with cluster.store.lock:
                addresses = [
                    f"{n['address']}:{n['api_port']}" for n in nodes.all_nodes(cluster.store)
                ]
            fingerprint = self.node.fingerprint
            assert fingerprint
            secret = text.partition(".")[2]
            text = JoinToken(
                cluster_id=self._cluster_id(),
                addresses=addresses,
                token_id=token_id,
                secret=secret,
                fingerprint=fingerprint,
            ).encode()
        shown = {"id": token_id, "kind": kind, "token": text, "expires_at": expires_at}
        return {**shown, "scope": scope} if kind == "admin" else shown

    # -- join (on the new node) -----------------------------------------------------------

    async def join(self, token_text: str) -> dict[str, Any]:
        async with self._lock:
            if self.identity:
                raise Conflict(
                    f"this node already belongs to cluster {self.identity['cluster_id']}"
                )
            token = decode_join_token(token_text)
            check_name(self.settings.name, what="node name")
            # Fail before the cluster hears of us if this node could not run as a member.
            check_port_free(self.settings.listen, self.settings.raft_port, "Raft")
            check_port_free(self.settings.listen, self.settings.api_port, "the API")
            credential, credential_sha = new_node_credential(self.settings.name)
            request = {
                "token_id": token.token_id,
                "secret": token.secret,
                "node": {**self.node_info(), "credential_sha256": credential_sha},
            }
            failures = []
            reply = member = None
            for addr in token.addresses:
                client = NodeClient(addr, fingerprint=token.fingerprint)
                try:
                    reply = await client.request("POST", "/v1/cluster/members", request)
                    member = addr
                    break
                except Unavailable as exc:
                    failures.append(str(exc))
            if reply is None or member is None:
                raise Unavailable("no member of the cluster answered: " + "; ".join(failures))
            await self._become_member(reply, member, token.fingerprint, credential)
        caught_up = await self._wait_until_listed(60.0)
        if caught_up:
            # The entries that listed us can come before our connections to a majority
            # (each peer connects on its own retry timer): wait for those, so the write
            # below does not take a new member's partial view for a lost quorum.
            await self._wait_for_leader(20.0)
            await self.node.require_cluster().propose_ok(
                Entry(
                    EntryType.NODE_UPDATE,
                    {
                        "name": self.settings.name,
                        "fields": {"status": "active"},
                    },
                )
            )
        log.info("joined cluster %s", reply["cluster_id"])
        return {
            "cluster_id": reply["cluster_id"],
            "node": self.settings.name,
            "members": sorted(self.node.require_cluster().raft_members()),
            "caught_up": caught_up,
        }

    async def _become_member(
        self, reply: dict[str, Any], member: str, fingerprint: str, credential: str
    ) -> None:
        """Second half of a join: start as a member, then ask `member` to add us to Raft.

        The cluster changes its Raft membership only once this node runs, so a join that
        fails here never leaves the cluster waiting for a node that will not come (in a
        one-node cluster that would cost its quorum). On failure this node is
        uninitialised again and asks the member to drop its row.
        """
        if fingerprint_pem(reply["cert_pem"].encode()) != fingerprint:
            raise Conflict("the member sent a certificate that does not match the token")
        secret = reply["secret"]
        # A member from before node credentials drops ours from the row: use the shared one.
        kept = isinstance(reply.get("node"), dict) and reply["node"].get("credential_sha256")
        token = credential if kept else shared_node_credential(secret)
        client = NodeClient(member, fingerprint=fingerprint, token=token)
        peers = [m for m in reply["members"] if m != self.settings.raft_addr]
        try:
            self._wipe_cluster_files()
            # the secrets retired by rotations open the values sealed before them
            retired = [s for s in reply.get("retired_secrets", []) if isinstance(s, str)]
            self._write_cluster_files(
                Keyring(secret, [], retired),
                reply["cert_pem"].encode(),
                reply["key_pem"].encode(),
                credential,
            )
            self.node.start_raft(peers)
            await self.node.start_https()
            await client.request("POST", f"/v1/cluster/members/{self.settings.name}/activate")
            self._save_identity(
                {
                    "name": self.settings.name,
                    "cluster_id": reply["cluster_id"],
                    "raft_addr": self.settings.raft_addr,
                    "peers": peers,
                    "created_at": now_rfc3339(),
                }
            )
        except BaseException:
            await self._forget_cluster()
            with contextlib.suppress(SymphonyError):
                await client.request("DELETE", f"/v1/nodes/{self.settings.name}?leaving=true")
            raise

    async def _wait_until_listed(self, timeout: float) -> bool:
        cluster = self.node.require_cluster()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with cluster.store.lock:
                if nodes.get(cluster.store, self.settings.name) is not None:
                    return True
                seen = cluster.store.revision
            await cluster.wait_for_revision(seen, 0.5)
        return False

    # -- admit (on a member) --------------------------------------------------------------

    async def admit(self, token_id: str, secret: str, node: Any) -> dict[str, Any]:
        cluster = self.node.require_cluster()
        record = _validated_node(node)
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
            "cluster_id": self._cluster_id(),
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
                state = await self._change_membership("add", record["raft_addr"], wait=20.0)
                if state != "committed":
                    raise Unavailable(f"adding {name} to Raft did not commit in time")
        log.info("node %s (%s) is a Raft member", name, record["raft_addr"])
        return {"node": name, "members": sorted(cluster.raft_members() | {record["raft_addr"]})}

    async def _change_membership(self, op: str, raft_addr: str, wait: float) -> str:
        """Membership change, retried while another change is still committing."""
        cluster = self.node.require_cluster()
        deadline = time.monotonic() + 15.0
        while True:
            try:
                return await cluster.change_membership(op, raft_addr, wait)
            except Conflict:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    # -- remove / leave --------------------------------------------------------------------

    async def remove_node(self, name: str, *, force: bool, leaving: bool = False) -> dict[str, Any]:
        cluster = self.node.require_cluster()
        with cluster.store.lock:
            record = nodes.get(cluster.store, name)
        if record is None:
            raise NotFound(f"no node named {name!r}")
        if name == self.settings.name:
            raise Conflict(f"{name} is this node: run `symphonyd leave` on it instead")
        raft_addr = record["raft_addr"]
        status = cluster.status()
        reachable = status.get("peers", {}).get(raft_addr, {}).get("connected", False)
        if reachable and not (force or leaving):
            raise Conflict(
                f"node {name} is reachable: run `symphonyd leave` on it, or remove it with --force"
            )
        if status.get("leader") == raft_addr:
            raise Conflict(f"node {name} is the leader; it must hand over leadership first")
        async with self._lock:
            if raft_addr in cluster.raft_members():
                state = await self._change_membership("remove", raft_addr, wait=10.0)
                if state != "committed":
                    raise Unavailable(f"removal of {name} from Raft did not commit in time")
            await cluster.propose_ok(Entry(EntryType.NODE_REMOVE, {"name": name}))
        log.info("removed node %s (%s)", name, raft_addr)
        return {"removed": name}

    async def _hand_over_leadership(self, cluster: Cluster, deadline: float) -> None:
        """While this node leads, ask for a transfer (denied while no follower is fully
        caught up: asked again until one is)."""
        me = self.settings.raft_addr
        while cluster.status().get("leader") in (me, None):
            if time.monotonic() > deadline:
                raise Unavailable(
                    "no other member leads the cluster (none has quorum, or leadership could "
                    "not be handed over); retry"
                )
            if cluster.status().get("role") == "leader":
                cluster.node.transfer_leadership()
            await asyncio.sleep(0.3)

    async def _ask_to_be_removed(self, cluster: Cluster) -> None:
        """The first member that answers removes this node (`remove_node`, leaving)."""
        me = self.settings.raft_addr
        with cluster.store.lock:
            peers = [n for n in nodes.all_nodes(cluster.store) if n["raft_addr"] != me]
        caller = self.node.caller
        assert caller is not None
        failures = []
        for peer in peers:
            client = caller.client(peer, timeout=30.0)
            try:
                await client.request("DELETE", f"/v1/nodes/{self.settings.name}?leaving=true")
                return
            except Unavailable as exc:
                failures.append(str(exc))
        raise Unavailable("no member answered the leave request: " + "; ".join(failures))

    async def leave(self) -> dict[str, Any]:
        cluster = self.node.require_cluster()
        me = self.settings.raft_addr
        others = cluster.raft_members() - {me}
        if not others:
            raise Conflict(
                "this is the cluster's only member; there is nothing to leave "
                "(to destroy the cluster, stop symphonyd and delete its data dir)"
            )
        deadline = time.monotonic() + 20.0
        while True:
            await self._hand_over_leadership(cluster, deadline)
            try:
                await self._ask_to_be_removed(cluster)
                break
            except Conflict:
                # the only refusal of a leaving node: it leads (an election after a fault
                # made it leader meanwhile, maybe not yet in its own view): hand over again
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        cluster_id = self._cluster_id()
        async with self._lock:
            await self._forget_cluster()
        log.info("left cluster %s", cluster_id)
        return {"left": cluster_id, "node": self.settings.name}


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise Unavailable unless this process could listen on host:port (checked by binding)."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise Unavailable(f"cannot listen on {host}:{port} for {what}: {exc.strerror}") from None
    finally:
        probe.close()


def _seconds_until(stamp: Any, now: datetime) -> float:
    """Seconds from `now` to an RFC 3339 time (0 for a missing or unreadable one)."""
    when = parse_rfc3339(stamp)
    return 0.0 if when is None else (when - now).total_seconds()


def _validated_node(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise Invalid("'node' must be an object")
    name = check_name(node.get("name"), what="node name")
    address = node.get("address")
    if not isinstance(address, str) or not address or any(c.isspace() for c in address):
        raise Invalid("node address is missing or invalid")
    ports = {}
    for key in ("api_port", "raft_port"):
        value = node.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise Invalid(f"node {key} must be a port number")
        ports[key] = value
    version = node.get("version")
    if version is not None and (
        not isinstance(version, str) or not 0 < len(version) <= 64 or not version.isprintable()
    ):
        raise Invalid("node version must be printable text of at most 64 characters")
    schema = node.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise Invalid("node schema must be a positive integer")
    credential = node.get("credential_sha256")  # absent from nodes before node credentials
    if credential is not None and not (
        isinstance(credential, str) and re.fullmatch("[0-9a-f]{64}", credential)
    ):
        raise Invalid("node credential_sha256 must be 64 hexadecimal digits")
    return {
        "name": name,
        "address": address,
        **ports,
        "raft_addr": f"{address}:{ports['raft_port']}",
        "version": version if isinstance(version, str) else None,
        "schema": schema,
        **({"credential_sha256": credential} if credential else {}),
    }
