"""This node's membership of a cluster, and the cluster's admin and join tokens.

The verbs: `init` (bootstrap a one-node cluster), `join` (this node joins using a token),
`remove_node` and `leave`, and `create_token`; the member's side of a join (`admit`,
`activate`, expiring joins that never finished) is `admissions` (admission.py). They touch
files as well as Raft: identity.json, the cluster secret and the TLS key pair
(identity.py). Everything they decide goes through the log; one lock, shared with
`admissions`, keeps this node from starting a membership change on top of an uncommitted
one. `remember_members` keeps identity.json's peers and this node's version record current.

It must not build or start the node's parts itself: it asks the daemon (`NodeWiring`) to
start and stop Raft and the HTTPS site. It takes and returns plain data, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from symphonyd import __version__
from symphonyd.admission import Admissions, NodeWiring, change_membership
from symphonyd.client import NodeClient
from symphonyd.config import Settings
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError, Unavailable
from symphonyd.identity import IdentityFiles
from symphonyd.keyring import Keyring
from symphonyd.raft.cluster import Cluster
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
    shared_node_credential,
)
from symphonyd.state import nodes
from symphonyd.validation import check_name

__all__ = ["Membership", "NodeWiring", "check_port_free"]

log = logging.getLogger("symphonyd.membership")


class Membership:
    """The membership verbs of one node, and its identity.json."""

    def __init__(self, settings: Settings, node: NodeWiring) -> None:
        self.settings = settings
        self.node = node
        self.files = IdentityFiles(settings)
        self._lock = asyncio.Lock()
        self.admissions = Admissions(settings, node, self.files, self._lock)
        self._identity_save_failed = False  # said once, until a save works again

    @property
    def identity(self) -> dict[str, Any] | None:
        """identity.json as last read or written (None: no cluster)."""
        return self.files.identity

    def load_identity(self) -> dict[str, Any] | None:
        return self.files.load()

    async def _forget_cluster(self) -> None:
        """Undo a membership: stop Raft and the HTTPS site, delete the cluster's files."""
        await self.node.stop_raft()
        self.files.wipe()
        self.files.identity = None

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
                    await asyncio.to_thread(self.files.save, {**identity, "peers": peers})
                except OSError as exc:  # a full disk: tried again in 2 s
                    if not self._identity_save_failed:
                        log.warning("cannot save the member list in %s: %s (will retry)",
                                    self.files.path, exc.strerror or exc)  # fmt: skip
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
            self.files.wipe()
            cluster_id = new_id()
            cert_pem, key_pem = make_certificate(cluster_id)
            credential, credential_sha = new_node_credential(self.settings.name)
            self.files.write(Keyring(new_secret()), cert_pem, key_pem, credential)
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
                self.files.save(
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
                cluster_id=self.files.cluster_id(),
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
            self.files.wipe()
            # the secrets retired by rotations open the values sealed before them
            retired = [s for s in reply.get("retired_secrets", []) if isinstance(s, str)]
            self.files.write(
                Keyring(secret, [], retired),
                reply["cert_pem"].encode(),
                reply["key_pem"].encode(),
                credential,
            )
            self.node.start_raft(peers)
            await self.node.start_https()
            await client.request("POST", f"/v1/cluster/members/{self.settings.name}/activate")
            self.files.save(
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
                state = await change_membership(cluster, "remove", raft_addr, wait=10.0)
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
        cluster_id = self.files.cluster_id()
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
