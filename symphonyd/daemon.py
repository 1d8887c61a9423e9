"""Builds and runs a node: settings, identity, the Raft node and store, the API sites.

Start order: data dir -> control socket (always) -> if this node belongs to a cluster:
Raft node -> HTTPS API. Stop order is the reverse; in-flight API requests finish first.

Membership verbs live here because they touch files as well as Raft: `init` (bootstrap a
one-node cluster), `join` (this node joins using a token), `admit` (a member lets a new
node in), `remove_node` and `leave`. Everything they decide goes through the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from symphonyd import __version__, metrics, systemd
from symphonyd.block.service import BlockService
from symphonyd.client import NodeClient
from symphonyd.config import Settings
from symphonyd.durable import write_file_durably
from symphonyd.errors import (
    Conflict,
    Invalid,
    NotFound,
    NotInitialized,
    SymphonyError,
    Unavailable,
)
from symphonyd.image import copier
from symphonyd.image.files import ImageFiles
from symphonyd.image.service import ImageService
from symphonyd.leader import LeaderLoops
from symphonyd.lifecycle.agent import LifecycleService
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import SCHEMA_VERSION, Entry, EntryType
from symphonyd.raft.fsm import FSM
from symphonyd.raft.node import RaftNode
from symphonyd.security import (
    decode_join_token,
    fingerprint_pem,
    make_certificate,
    new_api_token,
    new_id,
    new_secret,
    node_credential,
    now_rfc3339,
    sha256_hex,
)
from symphonyd.service_types import SERVICE_TYPES
from symphonyd.services import Registry, RunningService, ServiceHost
from symphonyd.state import cluster as cluster_table
from symphonyd.state import nodes, tokens
from symphonyd.state.store import Store
from symphonyd.validation import check_name

log = logging.getLogger("symphonyd.daemon")
SHUTDOWN_GRACE = 10.0


class Daemon:
    """One symphonyd process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity: dict[str, Any] | None = None
        self.cluster: Cluster | None = None
        self.images: ImageService | None = None
        self.registry = Registry(SERVICE_TYPES)
        self.running: dict[str, RunningService] = {}  # the service types started on this node
        self.lifecycles: LifecycleService | None = None
        self.leader_loops: LeaderLoops | None = None
        self.secret: str | None = None
        self.fingerprint: str | None = None
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self._tcp_site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._membership_lock = asyncio.Lock()
        self._stopped = asyncio.Event()

    # -- files -------------------------------------------------------------------------------

    @property
    def identity_path(self) -> str:
        return self.settings.path("identity.json")

    def _load_identity(self) -> dict[str, Any] | None:
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
        for name in ("identity.json", "secret"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.path(name))
        for name in ("raft", "tls"):
            shutil.rmtree(self.settings.path(name), ignore_errors=True)

    def _write_cluster_files(self, secret: str, cert_pem: bytes, key_pem: bytes) -> None:
        os.makedirs(self.settings.path("tls"), mode=0o700, exist_ok=True)
        write_file_durably(self.settings.path("secret"), secret.encode())
        write_file_durably(self.settings.path("tls", "cert.pem"), cert_pem, mode=0o644)
        write_file_durably(self.settings.path("tls", "key.pem"), key_pem)

    # -- start / stop ------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        """One daemon per data dir: a second one would steal the socket and the journal."""
        self._lock_fd = os.open(self.settings.path("symphonyd.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise Conflict(
                f"another symphonyd is already running with data dir {self.settings.data_dir}"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    async def start(self) -> None:
        from symphonyd.api.app import make_app

        os.makedirs(self.settings.data_dir, mode=0o700, exist_ok=True)
        self._lock_data_dir()
        self.identity = self._load_identity()
        # On SIGTERM, requests in flight get SHUTDOWN_GRACE seconds to finish; after that
        # they are cancelled (an upload that stalls is marked failed, its file removed).
        self._runner = web.AppRunner(
            make_app(self),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await self._runner.setup()
        sock_path = self.settings.socket_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, sock_path).start()
        finally:
            os.umask(old_umask)
        os.chmod(sock_path, 0o600)
        if self.identity:
            self._start_raft(self.identity.get("peers", []))
            await self._start_https()
        log.info(
            "symphonyd %s serving %s (%s)",
            __version__,
            sock_path,
            f"member of cluster {self.identity['cluster_id']}"
            if self.identity
            else "not initialised: run `symphonyd init` or `symphonyd join TOKEN`",
        )

    def _start_raft(self, peers: list[str]) -> None:
        _check_port_free(self.settings.listen, self.settings.raft_port, "Raft")
        with open(self.settings.path("secret")) as f:
            self.secret = f.read().strip()
        with open(self.settings.path("tls", "cert.pem"), "rb") as f:
            self.fingerprint = fingerprint_pem(f.read())
        store = Store()
        node = RaftNode(
            self_addr=self.settings.raft_addr,
            peers=[p for p in peers if p != self.settings.raft_addr],
            raft_dir=self.settings.path("raft"),
            secret=self.secret,
            fsm=FSM(store),
            bind_addr=f"{self.settings.listen}:{self.settings.raft_port}",
            tuning=self.settings.raft,
        )
        node.start()
        self.cluster = Cluster(node, store, asyncio.get_running_loop())
        metrics.watch_raft(lambda: self.cluster.status() if self.cluster else None)
        self.images = ImageService(
            self.cluster,
            ImageFiles(self.settings.data_dir),
            self.settings.name,
            fingerprint=self.fingerprint,
            credential=node_credential(self.secret),
        )
        self._start_task(self._remember_members())
        self._start_task(self.images.run_agent())
        self.leader_loops = LeaderLoops(self.cluster)
        for service_type in self.registry.types.values():
            running = service_type.start(self._service_host(service_type.name))
            self.running[service_type.name] = running
            for agent in running.agents:
                self._start_task(agent.run())
            for loop in running.background:
                self._start_task(loop())
            for loop_name, leader_loop in running.leader_loops.items():
                self.leader_loops.add(loop_name, leader_loop)
        self.leader_loops.start()
        self.lifecycles = LifecycleService(
            self.cluster,
            self.settings.name,
            self.settings.address,
            self.settings.data_dir,
            self.secret,
            self.settings.lifecycle_dirs,
        )
        self._start_task(self.lifecycles.run_agent())
        self.leader_loops.add("lost-node steps", self.lifecycles.fail_unreachable_steps)

    def _service_host(self, type_name: str) -> ServiceHost:
        assert self.cluster is not None
        return ServiceHost(
            cluster=self.cluster,
            node=self.settings.name,
            data_dir=self.settings.data_dir,
            settings=getattr(self.settings, type_name, {}),
            shared={"images": self.images},
        )

    async def enable_service(
        self,
        kind: str | None,
        driver: str | None,
        pool: str | None,
        options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Enable a service of a registered type on this node (see `services.Registry`)."""
        self.require_cluster()
        chosen = self.registry.get(kind if kind is not None else self.registry.names()[0])
        record = await self.registry.enable(
            self._service_host(chosen.name), chosen.name, driver, pool, options
        )
        running = self.running.get(chosen.name)
        if running is not None and running.on_enabled is not None:
            await running.on_enabled(record)
        return record

    def _start_task(self, work: Coroutine[Any, Any, Any]) -> None:
        """A background loop of this node; one that dies says so in the log at once."""
        task = asyncio.create_task(work)
        task.add_done_callback(_report_death)
        self._tasks.append(task)

    async def _start_https(self) -> None:
        assert self._runner is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(
            self.settings.path("tls", "cert.pem"), self.settings.path("tls", "key.pem")
        )
        self._tcp_site = web.TCPSite(
            self._runner,
            self.settings.listen,
            self.settings.api_port,
            ssl_context=context,
            reuse_address=True,
        )
        try:
            await self._tcp_site.start()
        except OSError as exc:
            raise Unavailable(
                f"cannot listen on {self.settings.listen}:{self.settings.api_port}: {exc}"
            ) from exc

    async def _stop_raft(self) -> None:
        if self.leader_loops is not None:
            await self.leader_loops.close()
            self.leader_loops = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:  # agents wait for their blocking calls (a copy stops at its next chunk)
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        site, self._tcp_site = self._tcp_site, None
        if site is not None and self._runner is not None and site in self._runner.sites:
            await site.stop()
        if self.images is not None:
            for task in list(self.images.running.values()):
                task.cancel()
            for task in list(self.images.running.values()):
                with contextlib.suppress(BaseException):
                    await task
            self.images = None
        for running in self.running.values():
            if running.close is not None:
                await running.close()
        self.running = {}
        if self.lifecycles is not None:
            # its agent's task was cancelled above; the processes it supervises stop here
            await asyncio.to_thread(self.lifecycles.supervisor.close)
            self.lifecycles = None
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.close()
            await asyncio.to_thread(cluster.node.stop)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # finishes in-flight requests
            self._runner = None
        await self._stop_raft()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.socket_path)
        self._stopped.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        systemd.notify(f"READY=1\nSTATUS=serving {self.settings.socket_path}")
        pings = systemd.start_watchdog()
        try:
            await stop.wait()
            log.info("stopping")
            systemd.notify("STOPPING=1")
        finally:
            systemd.stop_watchdog(pings)
            await self.stop()

    async def _remember_members(self) -> None:
        """Keep identity.json's peer list current, so a restart dials today's members, and
        this node's record telling the version it runs (after an upgrade)."""
        while True:
            await asyncio.sleep(2.0)
            cluster, identity = self.cluster, self.identity
            if cluster is None or identity is None:
                continue
            await self._record_version(cluster)
            peers = sorted(cluster.raft_members() - {self.settings.raft_addr})
            if peers != identity.get("peers"):
                await asyncio.to_thread(self._save_identity, {**identity, "peers": peers})

    async def _record_version(self, cluster: Cluster) -> None:
        with cluster.store.lock:
            record = nodes.get(cluster.store, self.settings.name)
        running = {"version": __version__, "schema": SCHEMA_VERSION}
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
                    "recorded that this node runs symphonyd %s (schema %d)",
                    __version__,
                    SCHEMA_VERSION,
                )

    # -- helpers for handlers ---------------------------------------------------------------

    def require_cluster(self) -> Cluster:
        if self.cluster is None:
            raise NotInitialized(
                "this node is not part of a cluster yet: run `symphonyd init` "
                "or `symphonyd join TOKEN`"
            )
        return self.cluster

    def require_block(self) -> BlockService:
        self.require_cluster()
        running = self.running.get("block")
        assert running is not None and isinstance(running.verbs, BlockService)
        return running.verbs

    def require_lifecycles(self) -> LifecycleService:
        self.require_cluster()
        assert self.lifecycles is not None
        return self.lifecycles

    def require_images(self) -> ImageService:
        self.require_cluster()
        assert self.images is not None
        return self.images

    def node_info(self) -> dict[str, Any]:
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

    async def _wait_for_leader(self, timeout: float) -> None:
        cluster = self.require_cluster()
        deadline = time.monotonic() + timeout
        while not cluster.has_leader():
            if time.monotonic() > deadline:
                raise Unavailable(cluster.no_quorum_message())
            await asyncio.sleep(0.05)

    # -- init --------------------------------------------------------------------------------

    async def init(self) -> dict[str, Any]:
        async with self._membership_lock:
            if self.identity:
                raise Conflict(
                    f"this node already belongs to cluster {self.identity['cluster_id']}"
                )
            check_name(self.settings.name, what="node name")
            self._wipe_cluster_files()
            cluster_id = new_id()
            cert_pem, key_pem = make_certificate(cluster_id)
            self._write_cluster_files(new_secret(), cert_pem, key_pem)
            try:
                self._start_raft([])
                await self._wait_for_leader(15.0)
                cluster = self.require_cluster()
                now = now_rfc3339()
                token_id, token_text, secret_sha = new_api_token()
                info = {
                    "id": cluster_id,
                    "created_at": now,
                    "fingerprint": fingerprint_pem(cert_pem),
                }
                me = {**self.node_info(), "id": new_id(), "status": "active", "created_at": now}
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
                                "expires_at": None,
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
                await self._start_https()
            except BaseException:
                await self._stop_raft()
                self._wipe_cluster_files()
                self.identity = None
                raise
            log.info("initialised cluster %s", cluster_id)
            return {
                "cluster_id": cluster_id,
                "node": self.settings.name,
                "admin_token": token_text,
                "fingerprint": info["fingerprint"],
                "api": f"https://{self.settings.address}:{self.settings.api_port}",
            }

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(
        self, kind: str, expires_in: float | None, description: str
    ) -> dict[str, Any]:
        cluster = self.require_cluster()
        if kind not in ("join", "admin"):
            raise Invalid("token kind must be 'join' or 'admin'")
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
        await cluster.propose_ok(Entry(EntryType.TOKEN_CREATE, {"token": record}))
        if kind == "join":
            from symphonyd.security import JoinToken

            with cluster.store.lock:
                addresses = [
                    f"{n['address']}:{n['api_port']}" for n in nodes.all_nodes(cluster.store)
                ]
            assert self.fingerprint
            secret = text.partition(".")[2]
            text = JoinToken(
                cluster_id=self._cluster_id(),
                addresses=addresses,
                token_id=token_id,
                secret=secret,
                fingerprint=self.fingerprint,
            ).encode()
        return {"id": token_id, "kind": kind, "token": text, "expires_at": expires_at}

    def _cluster_id(self) -> str:
        assert self.identity
        return str(self.identity["cluster_id"])

    # -- join (on the new node) -----------------------------------------------------------

    async def join(self, token_text: str) -> dict[str, Any]:
        async with self._membership_lock:
            if self.identity:
                raise Conflict(
                    f"this node already belongs to cluster {self.identity['cluster_id']}"
                )
            token = decode_join_token(token_text)
            check_name(self.settings.name, what="node name")
            # Fail before the cluster hears of us if this node could not run as a member.
            _check_port_free(self.settings.listen, self.settings.raft_port, "Raft")
            _check_port_free(self.settings.listen, self.settings.api_port, "the API")
            request = {"token_id": token.token_id, "secret": token.secret, "node": self.node_info()}
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
            await self._become_member(reply, member, token.fingerprint)
        caught_up = await self._wait_until_listed(60.0)
        if caught_up:
            await self.require_cluster().propose_ok(
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
            "members": sorted(self.require_cluster().raft_members()),
            "caught_up": caught_up,
        }

    async def _become_member(self, reply: dict[str, Any], member: str, fingerprint: str) -> None:
        """Second half of a join: start as a member, then ask `member` to add us to Raft.

        The cluster changes its Raft membership only once this node runs, so a join that
        fails here never leaves the cluster waiting for a node that will not come (in a
        one-node cluster that would cost its quorum). On failure this node is
        uninitialised again and asks the member to drop its row.
        """
        if fingerprint_pem(reply["cert_pem"].encode()) != fingerprint:
            raise Conflict("the member sent a certificate that does not match the token")
        secret = reply["secret"]
        client = NodeClient(member, fingerprint=fingerprint, token=node_credential(secret))
        peers = [m for m in reply["members"] if m != self.settings.raft_addr]
        try:
            self._wipe_cluster_files()
            self._write_cluster_files(secret, reply["cert_pem"].encode(), reply["key_pem"].encode())
            self._start_raft(peers)
            await self._start_https()
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
            await self._stop_raft()
            self._wipe_cluster_files()
            self.identity = None
            self.secret = self.fingerprint = None
            with contextlib.suppress(SymphonyError):
                await client.request("DELETE", f"/v1/nodes/{self.settings.name}?leaving=true")
            raise

    async def _wait_until_listed(self, timeout: float) -> bool:
        cluster = self.require_cluster()
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
        cluster = self.require_cluster()
        record = _validated_node(node)
        now = now_rfc3339()
        secret_sha = sha256_hex(secret)
        with cluster.store.lock:
            problem = tokens.check_usable(tokens.get(cluster.store, token_id), secret_sha, now)
            problem = problem or nodes.check_addable(cluster.store, record)
            in_use = max(
                (int(n.get("schema", 1)) for n in nodes.all_nodes(cluster.store)), default=1
            )
        if not problem and record["schema"] < in_use:
            problem = (
                "conflict",
                f"this cluster already speaks schema {in_use}; the joining "
                f"node speaks {record['schema']}: install the current symphonyd on it",
            )
        if problem:
            from symphonyd.raft.cluster import raise_for_result

            raise_for_result({"ok": False, "error": {"code": problem[0], "message": problem[1]}})
        record.update({"id": new_id(), "status": "joining", "created_at": now})
        async with self._membership_lock:
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
            "secret": self.secret,
            "cert_pem": cert_pem,
            "key_pem": key_pem,
            "members": sorted(cluster.raft_members() | {record["raft_addr"]}),
            "node": record,
        }

    async def activate(self, name: str) -> dict[str, Any]:
        """Add a joining node to the Raft membership, now that it runs (see `join`).

        Holds the membership lock until the change commits, so this node never starts a
        second change on top of an uncommitted one."""
        cluster = self.require_cluster()
        with cluster.store.lock:
            record = nodes.get(cluster.store, name)
        if record is None:
            raise NotFound(f"no node named {name!r} is joining")
        async with self._membership_lock:
            if record["raft_addr"] not in cluster.raft_members():
                state = await self._change_membership("add", record["raft_addr"], wait=20.0)
                if state != "committed":
                    raise Unavailable(f"adding {name} to Raft did not commit in time")
        log.info("node %s (%s) is a Raft member", name, record["raft_addr"])
        return {"node": name, "members": sorted(cluster.raft_members() | {record["raft_addr"]})}

    async def _change_membership(self, op: str, raft_addr: str, wait: float) -> str:
        """Membership change, retried while another change is still committing."""
        cluster = self.require_cluster()
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
        cluster = self.require_cluster()
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
        async with self._membership_lock:
            if raft_addr in cluster.raft_members():
                state = await self._change_membership("remove", raft_addr, wait=10.0)
                if state != "committed":
                    raise Unavailable(f"removal of {name} from Raft did not commit in time")
            await cluster.propose_ok(Entry(EntryType.NODE_REMOVE, {"name": name}))
        log.info("removed node %s (%s)", name, raft_addr)
        return {"removed": name}

    async def leave(self) -> dict[str, Any]:
        cluster = self.require_cluster()
        me = self.settings.raft_addr
        others = cluster.raft_members() - {me}
        if not others:
            raise Conflict(
                "this is the cluster's only member; there is nothing to leave "
                "(to destroy the cluster, stop symphonyd and delete its data dir)"
            )
        if cluster.status().get("role") == "leader":
            # Denied while no follower is fully caught up: ask again until one is.
            deadline = time.monotonic() + 10.0
            while cluster.status().get("leader") in (me, None):
                if time.monotonic() > deadline:
                    raise Unavailable("could not hand over leadership; retry")
                if cluster.status().get("role") == "leader":
                    cluster.node.transfer_leadership()
                await asyncio.sleep(0.3)
        with cluster.store.lock:
            peers = [n for n in nodes.all_nodes(cluster.store) if n["raft_addr"] != me]
        assert self.secret and self.fingerprint
        failures = []
        for peer in peers:
            client = NodeClient(
                f"{peer['address']}:{peer['api_port']}",
                fingerprint=self.fingerprint,
                token=node_credential(self.secret),
                timeout=30.0,
            )
            try:
                await client.request("DELETE", f"/v1/nodes/{self.settings.name}?leaving=true")
                break
            except Unavailable as exc:
                failures.append(str(exc))
        else:
            raise Unavailable("no member answered the leave request: " + "; ".join(failures))
        cluster_id = self._cluster_id()
        async with self._membership_lock:
            await self._stop_raft()
            self._wipe_cluster_files()
            self.identity = None
            self.secret = self.fingerprint = None
        log.info("left cluster %s", cluster_id)
        return {"left": cluster_id, "node": self.settings.name}

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "version": __version__,
            "image_copier": copier.describe(),
            "node": self.settings.name,
            "initialized": self.identity is not None,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        if self.cluster is None or self.identity is None:
            return {**base, "cluster_id": None, "members": [], "has_quorum": False}
        raft = self.cluster.status()
        store = self.cluster.store
        with store.lock:
            records = nodes.all_nodes(store)
            info = cluster_table.get(store) or {}
            revision = store.revision
        by_addr = {r["raft_addr"]: r for r in records}
        peers = raft.get("peers", {})
        leader_addr = raft.get("leader")
        if leader_addr not in (None, self.settings.raft_addr) and not peers.get(
            leader_addr, {}
        ).get("connected"):
            leader_addr = None  # pysyncobj remembers a leader it can no longer reach
        if not raft.get("has_quorum"):
            leader_addr = None  # a leader cut off from the majority leads nothing
        members = []
        for addr in sorted(self.cluster.raft_members() | set(by_addr)):
            record = by_addr.get(addr, {})
            if addr == self.settings.raft_addr:
                health = "online"
            else:
                connected = peers.get(addr, {}).get("connected")
                health = "online" if connected else "unreachable"
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
                }
            )
        members.sort(key=lambda m: (m["name"], m["raft_addr"]))
        leader = by_addr.get(leader_addr or "", {}).get("name")
        return {
            **base,
            "cluster_id": self.identity["cluster_id"],
            "fingerprint": self.fingerprint or info.get("fingerprint"),
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

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)


def _check_port_free(host: str, port: int, what: str) -> None:
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise Unavailable(f"cannot listen on {host}:{port} for {what}: {exc.strerror}") from None
    finally:
        probe.close()


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
    schema = node.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise Invalid("node schema must be a positive integer")
    return {
        "name": name,
        "address": address,
        **ports,
        "raft_addr": f"{address}:{ports['raft_port']}",
        "version": version if isinstance(version, str) else None,
        "schema": schema,
    }


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, component, message, and the resource id when
    the call gave one (`log.info(..., extra={"resource": id})`)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": now_rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        resource = getattr(record, "resource", None)
        if resource is not None:
            event["resource"] = resource
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event)


def setup_logging(level: str, fmt: str = "text") -> None:
    """One line per event on stderr (journald adds the time): level, component, message."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_daemon(config_file: str | None, overrides: dict[str, Any]) -> int:
    """`symphonyd run`: load settings, serve until SIGTERM/SIGINT. Returns the exit code."""
    from symphonyd.config import load_settings

    try:
        settings = load_settings(config_file, overrides)
    except SymphonyError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(Daemon(settings).serve_forever())
    except SymphonyError as exc:
        log.error("%s", exc.message)
        return 1
    return 0


def _report_death(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_coro(), exc_info=task.exception())
