"""A node's files of its cluster: identity.json (which cluster this node belongs to, its
raft address and the peers a restart dials), and the cluster secret, node credential and
TLS key pair written when it inits or joins and wiped when it leaves."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any

from symphonyd.config import Settings
from symphonyd.durable import write_file_durably
from symphonyd.errors import Invalid
from symphonyd.keyring import Keyring

log = logging.getLogger("symphonyd.membership")


class IdentityFiles:
    """identity.json and the cluster's files in one node's data dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return self.settings.path("identity.json")

    def load(self) -> dict[str, Any] | None:
        """Read identity.json (None: this node belongs to no cluster yet) into `identity`."""
        self.identity = self._read()
        return self.identity

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                identity = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise Invalid(f"{self.path} is damaged: {exc}") from exc
        if identity.get("raft_addr") != self.settings.raft_addr:
            raise Invalid(
                f"this data dir belongs to node {identity.get('name')!r} at raft address "
                f"{identity.get('raft_addr')}, but settings give {self.settings.raft_addr}: "
                "start it with its original --address/--raft-port"
            )
        if identity.get("name") != self.settings.name:
            log.info("node name comes from identity: %s", identity.get("name"))
        return dict(identity)

    def save(self, identity: dict[str, Any]) -> None:
        write_file_durably(self.path, json.dumps(identity, indent=2).encode())
        self.identity = identity

    def wipe(self) -> None:
        for name in ("identity.json", "secret", "secret.keys", "credential"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.path(name))
        for name in ("raft", "tls"):
            shutil.rmtree(self.settings.path(name), ignore_errors=True)

    def write(self, keyring: Keyring, cert_pem: bytes, key_pem: bytes, credential: str) -> None:
        os.makedirs(self.settings.path("tls"), mode=0o700, exist_ok=True)
        keyring.save(self.settings.data_dir)
        write_file_durably(self.settings.path("credential"), credential.encode())
        write_file_durably(self.settings.path("tls", "cert.pem"), cert_pem, mode=0o644)
        write_file_durably(self.settings.path("tls", "key.pem"), key_pem)

    def cluster_id(self) -> str:
        assert self.identity
        return str(self.identity["cluster_id"])
