"""Rotating the cluster secret on a live cluster, without losing quorum.

The node asked (`symphonyd cluster rotate-secret`, `POST /v1/cluster/rotate-secret`)
makes a new secret and moves every member through the three steps of `keyring.Keyring`,
one step on all of them before the next: `accept` (the Raft port takes messages under the
new secret too), `switch` (it sends and seals under the new one, still taking the old),
`retire` (the old one is refused). At every moment each pair of members shares a secret
the receiver accepts, so Raft keeps its connections and its leader. Each step is written
to the node's files before it answers, and is safe to repeat: a roll that failed half-way
is finished by running it again (with a newer secret: the members' files converge).

The new secret travels only inside the members' pinned HTTPS calls, authenticated with
the caller's node credential (`POST /v1/cluster/secret`, a node-only route). A roll needs
every member up: one that missed it could not talk to the others again. The aim is the
node that left or was stolen: once the old secret is retired it cannot take part in Raft
or use pysyncobj's utility commands, and values sealed after the roll are out of its reach.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from symphonyd.errors import Conflict, Invalid, SymphonyError, Unavailable
from symphonyd.redact import REDACTOR
from symphonyd.security import new_secret, sha256_hex, shared_node_credential
from symphonyd.state import nodes

if TYPE_CHECKING:
    from symphonyd.daemon import Daemon

log = logging.getLogger("symphonyd.rotation")

STEPS = ("accept", "switch", "retire")
SETTLE = 1.0  # s between switch and retire: messages sealed under the old secret drain
STEP_TIMEOUT = 20.0


class SecretRoll:
    """Both halves of a rotation on one node: the member's step and the coordinator."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._lock = asyncio.Lock()  # one roll at a time on this node

    # -- a member's step -------------------------------------------------------------------

    def step(self, step: str, secret: Any) -> dict[str, Any]:
        """Apply one step for `secret` on this node (idempotent)."""
        if step not in STEPS:
            raise Invalid(f"unknown step {step!r} (one of {', '.join(STEPS)})")
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

    # -- the coordinator ------------------------------------------------------------------

    async def rotate(self) -> dict[str, Any]:
        if self._lock.locked():
            raise Conflict("a rotation of the cluster secret is already running on this node")
        async with self._lock:
            return await self._rotate()

    async def _rotate(self) -> dict[str, Any]:
        daemon = self.daemon
        cluster = daemon.require_cluster()
        with cluster.store.lock:
            members = [dict(n) for n in nodes.all_nodes(cluster.store)]
        joining = [n["name"] for n in members if n.get("status") == "joining"]
        if joining:
            raise Conflict(f"node {', '.join(joining)} is joining: rotate once it is a member")
        secret = new_secret()
        REDACTOR.add([secret, shared_node_credential(secret)])
        for step in STEPS:
            if step == "retire":
                await asyncio.sleep(SETTLE)
            failed = await self._everywhere(members, step, secret)
            if failed and step == "accept":  # nobody sends under the new secret: no harm
                raise Unavailable(
                    "every member must take part in a rotation, and "
                    f"{'; '.join(failed)}. Nothing changed: bring it back, or remove it "
                    "(`symphonyd node remove`)"
                )
            if failed:
                raise Unavailable(
                    f"rotation stopped at its {step} step: {'; '.join(failed)}. Members accept "
                    "the old and the new secret until a roll completes: run "
                    "`symphonyd cluster rotate-secret` again once they answer"
                )
        log.warning("rotated the cluster secret on %d members", len(members))
        return {
            "rotated": True,
            "members": sorted(n["name"] for n in members),
            "secret_sha256": sha256_hex(secret)[:12],  # tells rolls apart; reveals nothing
        }

    async def _everywhere(self, members: list[dict[str, Any]], step: str, secret: str) -> list[str]:
        """Run `step` on every member (this node in-process); the failures, as text."""
        caller = self.daemon.caller
        assert caller is not None
        me = self.daemon.settings.name

        async def one(member: dict[str, Any]) -> None:
            if member["name"] == me:
                self.step(step, secret)
                return
            client = caller.client(member, timeout=STEP_TIMEOUT)
            await client.request("POST", "/v1/cluster/secret", {"step": step, "secret": secret})

        results = await asyncio.gather(*(one(m) for m in members), return_exceptions=True)
        failed = []
        for member, result in zip(members, results, strict=True):
            if isinstance(result, SymphonyError):
                failed.append(f"{member['name']} cannot be reached ({result.message})")
            elif isinstance(result, BaseException):
                raise result
        return failed
