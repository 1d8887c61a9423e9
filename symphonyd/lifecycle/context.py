"""What a provide body may use on its node: `self.context` of a running `State`.

The executor gives every state instance a `NodeContext` before calling `enter`, a provide,
`leave`, `cross` or `ensure`. Bodies do their work through it, so they stay testable and
never reach into the daemon:

* `node` and `address`: this node's name and the address other nodes reach it by;
* `work_dir`: a directory of this lifecycle's own on this node (created). `path(text)` is
  the only way from a value a user gave to a file: it resolves `text` inside `work_dir` and
  refuses what would leave it (an absolute path, `..`, a symlink pointing out), so a body
  never touches the host's files on a user's say;
* `lifecycles_dir`: the parent of every lifecycle's work dir on this node; a path another
  lifecycle handed over (a provider's return) is checked with `check_inside_node`;
* `data`: this lifecycle's runtime data on this node (JSON values), saved in the
  replicated store after every step, so what a body remembers survives a restart. Never
  put a secret in it: it is stored in clear;
* `supervisor`: starts and keeps running the processes a state promises (`Supervisor`),
  in `work_dir` unless told otherwise, as the node's lifecycle user where it has one
  (they may read their work dir, not change it);
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

from symphonyd.errors import Invalid

__all__ = [
    "InWorkDir",
    "NodeContext",
    "ProcessSupervisor",
    "confined_path",
    "is_inside",
    "make_work_dir",
]


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


def make_work_dir(lifecycles_dir: str, lifecycle: str, *, shared: bool) -> str:
    """`<lifecycles_dir>/<lifecycle>`, made if missing; `shared`: readable (not writable)
    by the unprivileged user the lifecycle's processes run as."""
    work_dir = os.path.join(lifecycles_dir, lifecycle)
    os.makedirs(work_dir, exist_ok=True)
    if shared:
        for directory in (lifecycles_dir, work_dir):
            os.chmod(directory, 0o755)
    return work_dir


@dataclass(frozen=True)
class InWorkDir:
    """A supervisor whose processes start in `work_dir` unless a body names a `cwd`."""

    supervisor: ProcessSupervisor
    work_dir: str

    def ensure(self, name: str, argv: Sequence[str], *, cwd: str | None = None) -> int:
        return self.supervisor.ensure(name, argv, cwd=cwd or self.work_dir)

    def stop(self, name: str) -> None:
        self.supervisor.stop(name)

    def status(self, name: str) -> dict[str, Any]:
        return self.supervisor.status(name)


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
        """The absolute path of `text` inside `work_dir` (see `confined_path`)."""
        return confined_path(self.work_dir, text)

    @property
    def lifecycles_dir(self) -> str:
        return os.path.dirname(os.path.normpath(self.work_dir))

    def check_inside_node(self, path: str, what: str) -> str:
        """`path` (absolute, handed over by another lifecycle of this node), or Invalid when
        it resolves outside this node's lifecycle work dirs."""
        if not os.path.isabs(path) or not is_inside(self.lifecycles_dir, path):
            raise Invalid(
                f"{what} {path!r} is outside this node's lifecycle work directories "
                f"({self.lifecycles_dir}); it was made by an older version: create it again"
            )
        return path


def is_inside(root: str, path: str) -> bool:
    """Whether `path`, with every symlink on the way resolved, is `root` or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def confined_path(root: str, text: str) -> str:
    """The absolute path of the relative path `text` under `root`, or Invalid when `text` is
    absolute, climbs out with `..`, holds a NUL, or leads out of `root` through a symlink
    that exists now (a link made later, between this check and the use, is the body's to
    guard against: the built-in servers check again on every request)."""
    if not isinstance(text, str) or not text or "\x00" in text:
        raise Invalid(f"bad path {text!r}: give a non-empty relative path")
    if os.path.isabs(text):
        raise Invalid(
            f"path {text!r} is absolute: give a path relative to the lifecycle's work "
            f"directory {root}"
        )
    if ".." in text.split("/"):
        raise Invalid(f"path {text!r} climbs out with '..': give a path inside {root}")
    path = os.path.normpath(os.path.join(root, text))
    if not is_inside(root, path):
        raise Invalid(f"path {text!r} leads out of {root} through a symbolic link")
    return path
