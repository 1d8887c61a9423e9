"""Rotating the cluster secret and the cluster certificate on a live cluster, without
losing quorum.

The node asked (`symphonyd cluster rotate-secret`, `POST /v1/cluster/rotate-secret`;
`cluster rotate-certificate`, `POST /v1/cluster/rotate-certificate`) makes the new secret
or certificate and moves every member through three steps, one step on all of them before
the next: `accept` (take the new one too), `switch` (use the new one, still taking the
old), `retire` (the old one is refused). At every moment each pair of members shares what
the receiver accepts, so Raft keeps its connections and its leader (the secret) and
node-to-node calls keep working (the certificate, pinned by fingerprint). Each step is
written to the node's files before it answers, and is safe to repeat: a roll that failed
half-way is finished by running it again (with a newer one: the members' files converge).

What is new travels only inside the members' pinned HTTPS calls, authenticated with the
caller's node credential (`POST /v1/cluster/secret`, `POST /v1/cluster/certificate`:
node-only routes). A roll needs every member up: one that missed it could not talk to the
others again. The aim is the node that left or was stolen: once the old secret is retired
it cannot take part in Raft or use pysyncobj's utility commands, and values sealed after
the roll are out of its reach; once the old certificate is retired, a host holding its
key cannot pass for a member.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from symphonyd.certificates import CertificateFiles, CertificatePair, fingerprint_of
from symphonyd.errors import Conflict, Invalid, SymphonyError, Unavailable
from symphonyd.redact import REDACTOR
from symphonyd.security import make_certificate, new_secret, sha256_hex, shared_node_credential
from symphonyd.state import nodes

if TYPE_CHECKING:
    from symphonyd.daemon import Daemon

log = logging.getLogger("symphonyd.rotation")

STEPS = ("accept", "switch", "retire")
SETTLE = 1.0  # s between switch and retire: messages sealed under the old secret drain
STEP_TIMEOUT = 20.0


class Roll:
    """What both rotations share: one roll at a time, every member in each step."""

    what = ""  # "cluster secret"
    command = ""  # "rotate-secret"
    step_path = ""  # the node-only route a member's step is posted to

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._lock = asyncio.Lock()  # one roll at a time on this node

    def step(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def check_step(self, step: str) -> None:
        if step not in STEPS:
            raise Invalid(f"unknown step {step!r} (one of {', '.join(STEPS)})")

    async def rotate(self) -> dict[str, Any]:
        if self._lock.locked():
            raise Conflict(f"a rotation of the {self.what} is already running on this node")
        async with self._lock:
            return await self._rotate()

    async def _rotate(self) -> dict[str, Any]:
        raise NotImplementedError

    def members(self) -> list[dict[str, Any]]:
        """Every member, refused while one is joining (it would miss the roll)."""
        cluster = self.daemon.require_cluster()
        with cluster.store.lock:
            members = [dict(n) for n in nodes.all_nodes(cluster.store)]
        joining = [n["name"] for n in members if n.get("status") == "joining"]
        if joining:
            raise Conflict(f"node {', '.join(joining)} is joining: rotate once it is a member")
        return members

    async def roll(
        self, members: list[dict[str, Any]], body: dict[str, Any], accept_only: str = ""
    ) -> None:
        """Every step on every member, stopping at the first step a member missed; the
        field `accept_only` is sent with the accept step only."""
        for step in STEPS:
            if step == "retire":
                await asyncio.sleep(SETTLE)
            if step == "switch":
                body = {k: v for k, v in body.items() if k != accept_only}
            failed = await self._everywhere(members, step, body)
            if failed and step == "accept":  # nobody uses the new one yet: no harm
                raise Unavailable(
                    "every member must take part in a rotation, and "
                    f"{'; '.join(failed)}. Nothing changed: bring it back, or remove it "
                    "(`symphonyd node remove`)"
                )
            if failed:
                raise Unavailable(
                    f"rotation stopped at its {step} step: {'; '.join(failed)}. Members accept "
                    f"the old and the new {self.what} until a roll completes: run "
                    f"`symphonyd cluster {self.command}` again once they answer"
                )

    async def _everywhere(
        self, members: list[dict[str, Any]], step: str, body: dict[str, Any]
    ) -> list[str]:
        """Run `step` on every member (this node in-process); the failures, as text."""
        caller = self.daemon.caller
        assert caller is not None
        me = self.daemon.settings.name

        async def one(member: dict[str, Any]) -> None:
            if member["name"] == me:
                self.step(step, body)
                return
            client = caller.client(member, timeout=STEP_TIMEOUT)
            await client.request("POST", self.step_path, {"step": step, **body})

        results = await asyncio.gather(*(one(m) for m in members), return_exceptions=True)
        failed = []
        for member, result in zip(members, results, strict=True):
            if isinstance(result, SymphonyError):
                failed.append(f"{member['name']} cannot be reached ({result.message})")
            elif isinstance(result, BaseException):
                raise result
        return failed


class SecretRoll(Roll):
    what = "cluster secret"
    command = "rotate-secret"
    step_path = "/v1/cluster/secret"

    def step(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one step for the body's `secret` on this node (idempotent)."""
        self.check_step(step)
        secret = body.get("secret")
        if not isinstance(secret, str) or not 32 <= len(secret) <= 256 or not secret.isascii():
            raise Invalid("'secret' must be the new cluster secret")
        daemon = self.daemon
        keyring, cluster, caller = daemon.keyring, daemon.cluster, daemon.caller
        if keyring is None or cluster is None or caller is None:
            raise Unavailable("this node's Raft does not run")
        REDACTOR.add([secret, shared_node_credential(secret)])  # removed with the others
        getattr(keyring, step)(secret)
        keyring.save(daemon.settings.data_dir)
        cluster.node.encryptor.use(keyring.current, keyring.accepts)
        caller.shared = shared_node_credential(keyring.current)
        log.info(
            "cluster secret rotation: %s done (%d accepted besides)", step, len(keyring.accepts)
        )
        return {"node": daemon.settings.name, "step": step, "accepts": len(keyring.accepts)}

    async def _rotate(self) -> dict[str, Any]:
        members = self.members()
        secret = new_secret()
        REDACTOR.add([secret, shared_node_credential(secret)])
        await self.roll(members, {"secret": secret})
        log.warning("rotated the cluster secret on %d members", len(members))
        return {
            "rotated": True,
            "members": sorted(n["name"] for n in members),
            "secret_sha256": sha256_hex(secret)[:12],  # tells rolls apart; reveals nothing
        }


class CertificateRoll(Roll):
    what = "cluster certificate"
    command = "rotate-certificate"
    step_path = "/v1/cluster/certificate"

    def step(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one step for the body's `certificate` (and, to accept, `key`)."""
        self.check_step(step)
        daemon = self.daemon
        caller, context = daemon.caller, daemon.tls_context
        if caller is None or context is None:
            raise Unavailable("this node's HTTPS API does not run")
        files = CertificateFiles(daemon.settings.data_dir)
        if step == "accept":
            key = body.get("key")
            if isinstance(key, str):
                REDACTOR.add([key])
            pair = CertificatePair.parse(body.get("certificate"), key)
            files.accept(pair)
            new = pair.fingerprint
        else:
            new = fingerprint_of(body.get("certificate"))
            getattr(files, step)(new)
            if step == "switch":
                files.load_into(context)  # the handshakes from now on show the new one
        pins = files.pins()
        caller.fingerprint, caller.also = pins[0], pins[1:]
        daemon.fingerprint = pins[0]
        log.info("cluster certificate rotation: %s done (%d pinned besides)", step, len(pins) - 1)
        return {"node": daemon.settings.name, "step": step, "fingerprint": pins[0]}

    async def _rotate(self) -> dict[str, Any]:
        members = self.members()
        identity = self.daemon.membership.identity
        assert identity is not None
        cert_pem, key_pem = make_certificate(str(identity["cluster_id"]))
        REDACTOR.add([key_pem.decode()])
        old = self.daemon.fingerprint
        body = {"certificate": cert_pem.decode(), "key": key_pem.decode()}
        await self.roll(members, body, accept_only="key")
        pair = CertificatePair(cert_pem, key_pem)
        log.warning("rotated the cluster certificate on %d members", len(members))
        return {
            "rotated": True,
            "members": sorted(n["name"] for n in members),
            "fingerprint": pair.fingerprint,
            "previous_fingerprint": old,
        }
