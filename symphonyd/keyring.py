"""The cluster secrets one node holds: the current one, those it still accepts on the Raft
port while a rotation rolls, and the retired ones that still open old sealed values.

Files in the data dir, each written durably and 0600:
* `secret`: the current secret (text), what the Raft port sends under and seals with;
* `secret.keys`: JSON `{"accepts": [...], "retired": [...]}`; absent until a rotation.

A rotation (`symphonyd cluster rotate-secret`, see `rotation.py`) moves every member
through three steps, each safe to repeat and to survive a restart:
`accept(new)` (take messages under `new` too), `switch(new)` (send and seal under `new`;
the old one is still accepted and joins the retired), `retire(new)` (accept `new` only).
A node that left keeps only the secrets from before the roll: once every member retired
them, the Raft port refuses it. Sealed values stay readable: `unseal` tries the retired
secrets after the current one (a value sealed before the roll was in the journal the
leaving node kept anyway; everything sealed after is out of its reach).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from symphonyd.durable import write_file_durably
from symphonyd.errors import Invalid
from symphonyd.security import seal, unseal


@dataclass
class Keyring:
    current: str
    accepts: list[str] = field(default_factory=list)  # besides current, on the Raft port
    retired: list[str] = field(default_factory=list)  # newest first; for unsealing only

    # -- files ---------------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: str) -> Keyring:
        with open(os.path.join(data_dir, "secret")) as f:
            current = f.read().strip()
        try:
            with open(os.path.join(data_dir, "secret.keys")) as f:
                extra = json.load(f)
        except FileNotFoundError:
            extra = {}
        except ValueError as exc:
            raise Invalid(f"{data_dir}/secret.keys is damaged: {exc}") from None
        return cls(current, list(extra.get("accepts", [])), list(extra.get("retired", [])))

    def save(self, data_dir: str) -> None:
        """Write both files; `secret.keys` first, so a crash between them leaves the new
        secret accepted either way."""
        extra = {"accepts": self.accepts, "retired": self.retired}
        write_file_durably(os.path.join(data_dir, "secret.keys"), json.dumps(extra).encode())
        write_file_durably(os.path.join(data_dir, "secret"), self.current.encode())

    # -- the roll ------------------------------------------------------------------------

    def accept(self, new: str) -> None:
        if new != self.current and new not in self.accepts:
            self.accepts.append(new)

    def switch(self, new: str) -> None:
        if new == self.current:
            return
        old = self.current
        self.current = new
        self.accepts = [s for s in [*self.accepts, old] if s != new]
        self.retired = [old, *(s for s in self.retired if s not in (old, new))]

    def retire(self, new: str) -> None:
        if new != self.current:
            raise Invalid("this node does not send under the new secret yet: switch first")
        self.accepts = []

    # -- use -----------------------------------------------------------------------------

    def all_texts(self) -> list[str]:
        """Every secret held, for the redactor."""
        return [self.current, *self.accepts, *self.retired]

    def seal(self, text: str) -> str:
        return seal(self.current, text)

    def unseal(self, sealed: str) -> str:
        """The text of a value sealed under any secret this node held (current first)."""
        problem: Invalid | None = None
        for secret in [self.current, *self.retired, *self.accepts]:
            try:
                return unseal(secret, sealed)
            except Invalid as exc:
                problem = exc
        assert problem is not None
        raise problem
