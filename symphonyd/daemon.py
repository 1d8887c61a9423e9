"""Builds and runs a node: settings, the data dir, the Raft node and store, the services,
the API sites; and the order in which they start and stop.

Start order: data dir (locked) -> control socket (always) -> if this node belongs to a
cluster: Raft node and store -> the services' agents and loops -> HTTPS API. Stop order is
the reverse; in-flight API requests finish first.

This module is wiring only. It must not decide anything itself: membership and tokens
(`membership.py`), the status view (`node_status.py`) and log setup (`logs.py`) live in
their own modules, and the services own their own clean-up (`close()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import stat
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any

from aiohttp import web

from symphonyd import __version__, allocator, metrics, systemd
from symphonyd.api.connections import CONNECTIONS
from symphonyd.block.service import BlockService
from symphonyd.certificates import CertificateFiles
from symphonyd.client import MemberCaller
from symphonyd.compute.service import ComputeService
from symphonyd.config import STORE_DEFAULTS, Settings
from symphonyd.departed import remove_departed
from symphonyd.durable import lock_data_dir, write_file_durably
from symphonyd.errors import Conflict, NotInitialized, SymphonyError, Unavailable
from symphonyd.image import expiry as image_expiry
from symphonyd.image.files import ImageFiles
from symphonyd.image.service import ImageService
from symphonyd.keyring import Keyring
from symphonyd.leader import LeaderLoops
from symphonyd.lifecycle.agent import LifecycleService
from symphonyd.lifecycle.supervisor import run_as_user
from symphonyd.logs import setup_logging
from symphonyd.membership import Membership, check_port_free
from symphonyd.node_status import leader_view, node_status
from symphonyd.progress import ProgressBoard
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.fsm import FSM
from symphonyd.raft.node import RaftNode
from symphonyd.redact import REDACTOR
from symphonyd.rotation import CertificateRoll, SecretRoll
from symphonyd.security import (
    credential_sha256,
    new_node_credential,
    shared_node_credential,
)
from symphonyd.service_types import SERVICE_TYPES
from symphonyd.services import Registry, RunningService, ServiceHost
from symphonyd.state import nodes
from symphonyd.state.store import Store

log = logging.getLogger("symphonyd.daemon")
SHUTDOWN_GRACE = 10.0


class Daemon:
    """One symphonyd process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster: Cluster | None = None
        self.images: ImageService | None = None
        self.registry = Registry(SERVICE_TYPES)
        self.running: dict[str, RunningService] = {}  # the service types started on this node
        self.progress = ProgressBoard()  # this node's long work in progress (not in the log)
        self.lifecycles: LifecycleService | None = None
        self.leader_loops: LeaderLoops | None = None
        # The cluster secret, certificate fingerprint and this node's credential (and how
        # it calls other members with them), read when Raft starts.
        self.keyring: Keyring | None = None
        self.fingerprint: str | None = None
        self.credential: str | None = None
        self.caller: MemberCaller | None = None
        self.secret_roll = SecretRoll(self)
        self.certificate_roll = CertificateRoll(self)
        self.tls_context: ssl.SSLContext | None = None  # the HTTPS API's, while it serves
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self._tcp_site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()  # SIGTERM, SIGINT, or a fatal Raft error
        self.exit_code = 0  # what `symphonyd run` exits with
        self.membership = Membership(settings, self)

    # -- start / stop ------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        """One daemon per data dir: a second one would steal the socket and the journal."""
        fd = lock_data_dir(self.settings.data_dir)
        if fd is None:
            raise Conflict(
                f"another symphonyd is already running with data dir {self.settings.data_dir}"
            )
        self._lock_fd = fd
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    async def start(self) -> None:
        from symphonyd.api.app import make_app

        os.makedirs(self.settings.data_dir, mode=DATA_DIR_MODE, exist_ok=True)
        _private(self.settings.data_dir)
        self._lock_data_dir()
        identity = self.membership.load_identity()
        # On SIGTERM, requests in flight get SHUTDOWN_GRACE seconds to finish; after that
        # they are cancelled (an upload that stalls is marked failed, its file removed).
        self._runner = web.AppRunner(
            make_app(self),
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._runner.app[CONNECTIONS].attach(self._runner.server)
        sock_path = self.settings.socket_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, sock_path).start()
        finally:
            os.umask(old_umask)
        os.chmod(sock_path, 0o600)
        if identity:
            self.start_raft(identity.get("peers", []))
            await self.start_https()
        log.info(
            "symphonyd %s serving %s (%s)",
            __version__,
            sock_path,
            f"member of cluster {identity['cluster_id']}"
            if identity
            else "not initialised: run `symphonyd init` or `symphonyd join TOKEN`",
        )

    def start_raft(self, peers: list[str]) -> None:
        """Start the Raft node and store, then every service of this node on top of them."""
        check_port_free(self.settings.listen, self.settings.raft_port, "Raft")
        self.keyring = Keyring.load(self.settings.data_dir)
        self.credential = self._read_credential()
        REDACTOR.add(self._secrets())  # never in a log line or an error
        certificates = CertificateFiles(self.settings.data_dir)
        certificates.recover()
        pins = certificates.pins()
        self.fingerprint = pins[0]
        self.caller = MemberCaller(
            self.fingerprint,
            self.credential,
            shared_node_credential(self.keyring.current),
            registered=self._credential_registered,
            also=pins[1:],
        )
        bounds = {**STORE_DEFAULTS, **self.settings.store}
        store = Store()
        store.history_max_bytes = bounds["history_max_bytes"]
        node = RaftNode(
            self_addr=self.settings.raft_addr,
            peers=[p for p in peers if p != self.settings.raft_addr],
            raft_dir=self.settings.path("raft"),
            secret=self.keyring.current,
            accepts=self.keyring.accepts,
            fsm=FSM(store),
            bind_addr=f"{self.settings.listen}:{self.settings.raft_port}",
            tuning=self.settings.raft,
            log_max_bytes=bounds["log_max_bytes"],
        )
        event_loop = asyncio.get_running_loop()

        def on_fatal(why: str) -> None:  # on the Raft thread
            event_loop.call_soon_threadsafe(self._fatal, why)

        node.fatal_listeners.append(on_fatal)
        node.start()
        self.cluster = Cluster(node, store, event_loop)
        self.cluster.quota_bytes = bounds["quota"]
        self.cluster.disk_reserve = bounds["disk_reserve"]
        metrics.watch_raft(lambda: self.cluster.status() if self.cluster else None)
        self.images = ImageService(
            self.cluster,
            ImageFiles(self.settings.data_dir),
            self.settings.name,
            caller=self.caller,
            board=self.progress,
        )
        self._start_task(self.membership.remember_members())
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
            self.keyring,
            self.settings.lifecycle_dirs,
            run_as_user(self.settings.lifecycle_user),
        )
        self._start_task(self.lifecycles.run_agent())
        self.leader_loops.add("lost-node steps", self.lifecycles.fail_unreachable_steps)
        cluster = self.cluster
        self.leader_loops.add("failed images", lambda: image_expiry.remove_stale_failed(cluster))
        self.leader_loops.add("departed nodes", lambda: remove_departed(cluster))
        self.leader_loops.add("expired joins", self.membership.admissions.expire_joins)

    def _service_host(self, type_name: str) -> ServiceHost:
        assert self.cluster is not None
        return ServiceHost(
            cluster=self.cluster,
            node=self.settings.name,
            data_dir=self.settings.data_dir,
            settings=getattr(self.settings, type_name, {}),
            shared={"images": self.images, "progress": self.progress},
            leader_view=lambda: leader_view(self.cluster, self.caller),
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

    async def start_https(self) -> None:
        assert self._runner is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        CertificateFiles(self.settings.data_dir).load_into(context)
        self.tls_context = context
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

    async def stop_raft(self) -> None:
        """Stop what `start_raft` and `start_https` started, in the reverse order, and
        forget the cluster secret and fingerprint."""
        if self.leader_loops is not None:
            await self.leader_loops.close()
            self.leader_loops = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:  # agents wait for their blocking calls (a copy stops at its next chunk)
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        site, self._tcp_site = self._tcp_site, None
        self.tls_context = None
        if site is not None and self._runner is not None and site in self._runner.sites:
            await site.stop()
        if self.images is not None:
            await self.images.close()
            self.images = None
        for running in self.running.values():
            if running.close is not None:
                await running.close()
        self.running = {}
        if self.lifecycles is not None:
            await self.lifecycles.close()  # its agent's task was cancelled above
            self.lifecycles = None
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.close()
            await asyncio.to_thread(cluster.node.stop)
        REDACTOR.remove(self._secrets())
        self.keyring = None
        self.fingerprint = self.credential = None
        self.caller = None

    def member_addresses(self) -> set[str]:
        """The addresses the members were recorded with (empty before init or join)."""
        cluster = self.cluster
        if cluster is None:
            return set()
        with cluster.store.lock:
            return {n["address"] for n in nodes.all_nodes(cluster.store)}

    def _read_credential(self) -> str:
        """This node's credential; a node from before node credentials makes one now
        (membership records it in the node's row, and members accept it from then on)."""
        path = self.settings.path("credential")
        try:
            with open(path) as f:
                text = f.read().strip()
            credential_sha256(text)  # refuses a damaged file
            return text
        except FileNotFoundError:
            text, _ = new_node_credential(self.settings.name)
            write_file_durably(path, text.encode())
            log.info("made this node's own credential (%s)", path)
            return text

    def _credential_registered(self) -> bool:
        """Whether this node's row holds its credential (members accept it only then)."""
        cluster, credential = self.cluster, self.credential
        if cluster is None or credential is None:
            return False
        with cluster.store.lock:
            row = nodes.get(cluster.store, self.settings.name)
        return row is not None and row.get("credential_sha256") == credential_sha256(credential)

    @property
    def secret(self) -> str | None:
        """The current cluster secret (None while Raft does not run)."""
        return self.keyring.current if self.keyring is not None else None

    def _secrets(self) -> list[str]:
        """The cluster secrets, what derives from them and this node's credential, as text."""
        if self.keyring is None:
            return []
        held = self.keyring.all_texts()
        derived = [shared_node_credential(s) for s in held]
        return [*held, *derived, *filter(None, [self.credential])]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.app[CONNECTIONS].close()
            await self._runner.cleanup()  # finishes in-flight requests
            self._runner = None
        await self.stop_raft()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.socket_path)
        self._stopped.set()

    def _fatal(self, why: str) -> None:
        """The Raft node stopped for good (raft/node.py `_stop_on_fatal`): the daemon
        stops too and exits with status 1, for systemd to restart it."""
        self.exit_code = 1
        systemd.notify(f"STATUS=stopping: {why}")
        self._stop_requested.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop_requested
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

    def require_compute(self) -> ComputeService:
        self.require_cluster()
        running = self.running.get("compute")
        assert running is not None and isinstance(running.verbs, ComputeService)
        return running.verbs

    def require_lifecycles(self) -> LifecycleService:
        self.require_cluster()
        assert self.lifecycles is not None
        return self.lifecycles

    def require_images(self) -> ImageService:
        self.require_cluster()
        assert self.images is not None
        return self.images

    def status(self) -> dict[str, Any]:
        """The /v1/cluster answer (see `node_status`)."""
        return node_status(
            self.settings,
            identity=self.membership.identity,
            cluster=self.cluster,
            fingerprint=self.fingerprint,
            started_at=self.started_at,
        )

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)


def run_daemon(config_file: str | None, overrides: dict[str, Any]) -> int:
    """`symphonyd run`: load settings, serve until SIGTERM/SIGINT. Returns the exit code."""
    from symphonyd.config import load_settings

    try:
        settings = load_settings(config_file, overrides)
    except SymphonyError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    allocator.mmap_threshold = allocator.fix_mmap_threshold()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    daemon = Daemon(settings)
    try:
        asyncio.run(daemon.serve_forever())
    except SymphonyError as exc:
        log.error("%s", exc.message)
        return 1
    return daemon.exit_code


DATA_DIR_MODE = 0o711
KEEPALIVE_TIMEOUT = 75.0  # s an idle keep-alive connection stays open (aiohttp's: ~1 h)


def _private(data_dir: str) -> None:
    """The data dir holds the cluster secret and the TLS key: only its owner may list or
    read it. Others may only pass through it (0711), to the files a hypervisor is given
    by name (a volume, a seed), whose own modes and owners libvirt sets; every secret in it
    is 0600 or in a 0700 dir. A pre-existing dir keeps no wider mode (the log says so)."""
    mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    if mode != DATA_DIR_MODE:
        os.chmod(data_dir, DATA_DIR_MODE)
        if mode & 0o066:
            log.warning("data dir %s was mode %04o; made it %04o", data_dir, mode, DATA_DIR_MODE)


def _report_death(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_coro(), exc_info=task.exception())
