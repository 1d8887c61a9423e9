"""What a provide body may use on its node: `self.context` of a running `State`.

The executor gives every state instance a `NodeContext` before calling `enter`, a provide,
`leave`, `cross` or `ensure`. Bodies do their work through it, so they stay testable and
never reach into the daemon:

* `node` and `address`: this node's name and the address other nodes reach it by;
* `work_dir`: a directory of this lifecycle's own on this node (created; relative paths a
  body is given are taken under it, never under the daemon's working directory);
* `data`: this lifecycle's runtime data on this node (JSON values), saved in the
  replicated store after every step, so what a body remembers survives a restart. Never
  put a secret in it: it is stored in clear;
* `supervisor`: starts and keeps running the processes a state promises (`Supervisor`);
* `simulate`: True under `--simulate`, where bodies are not run at all (kept for bodies
  that want to say what they would do).

It must not import the store, Raft or the API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["NodeContext", "ProcessSupervisor"]


class ProcessSupervisor(Protocol):
    """The processes a node keeps running for its lifecycles, by name."""

    def ensure(self, name: str, argv: Sequence[str], *, cwd: str | None = None) -> int:
        """Run `argv` under `name` unless it already runs with the same argv (then keep it);
        restarted if it dies; returns its pid."""
        ...

    def stop(self, name: str) -> None:
        """Stop it (the whole process group), wait for it; nothing if it does not run."""
        ...

    def status(self, name: str) -> dict[str, Any]:
        """{"running": bool, "pid": int | None, "restarts": int, "last_exit": int | None}."""
        ...


@dataclass
class NodeContext:
    node: str
    address: str
    work_dir: str
    supervisor: ProcessSupervisor
    data: dict[str, Any] = field(default_factory=dict)
    simulate: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("symphonyd.lifecycle"))

    def path(self, text: str) -> str:
        """An absolute path: `text` itself if absolute, else under `work_dir`."""
        return os.path.normpath(os.path.join(self.work_dir, text))
