"""The pysyncobj this code was written against, and the check that the installed one is it.

raft/node.py (and prevote.py, readindex.py) override or read pysyncobj's private,
name-mangled internals; `RELIED_ON` lists them. `check_pysyncobj` runs when raft/node.py
is imported: a pysyncobj of another version, or one lacking a name, is refused with
ImportError, so a daemon never starts with some fixes in effect and others silently gone.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

PYSYNCOBJ_VERSION = "0.3.17"  # the release the overrides below were written against

# pysyncobj's internals that the overrides below rely on, as (kind, name):
#   "global"  a pysyncobj.syncobj global that SyncObj.__init__ calls (swapped while it runs)
#   "method"  a SyncObj method overridden, shadowed, or called by its mangled name
#   "state"   an attribute SyncObj.__init__ sets on the instance, used here
RELIED_ON: tuple[tuple[str, str], ...] = (
    ("global", "createJournal"),
    ("global", "getEncryptor"),
    ("method", "_applyCommand"),
    ("method", "_checkCommandsToApply"),
    ("method", "_doDestroy"),
    ("method", "_SyncObj__onMessageReceived"),
    ("method", "_SyncObj__applyLogEntries"),
    ("method", "_SyncObj__sendAppendEntries"),
    ("method", "_SyncObj__callErrCallback"),
    ("state", "_SyncObj__transport"),
    ("state", "_SyncObj__commandsQueue"),
    ("state", "_SyncObj__pipeNotifier"),
    ("state", "_SyncObj__otherNodes"),
    ("state", "_SyncObj__raftNextIndex"),
    ("state", "_SyncObj__raftState"),  # the pre-vote timer (raft/prevote.py) ...
    ("state", "_SyncObj__raftCurrentTerm"),
    ("state", "_SyncObj__raftElectionDeadline"),
    ("state", "_SyncObj__raftCommitIndex"),  # ... and read index (raft/readindex.py)
    ("state", "_SyncObj__raftLastApplied"),
    ("state", "_SyncObj__raftLeader"),
    ("method", "_SyncObj__getCurrentLogIndex"),
    ("method", "_SyncObj__parseChangeClusterRequest"),  # _adopt_logged_membership
    ("method", "_SyncObj__doChangeCluster"),
    ("state", "_SyncObj__needLoadDumpFile"),
    ("method", "_SyncObj__getCurrentLogTerm"),
)


def missing_internals(module: ModuleType) -> list[str]:
    """The names in `RELIED_ON` that `module` (pysyncobj.syncobj) lacks."""
    syncobj = getattr(module, "SyncObj", None)
    init_code = getattr(getattr(syncobj, "__init__", None), "__code__", None)
    init_names = set(getattr(init_code, "co_names", ()))  # what SyncObj.__init__ refers to
    present: dict[str, Callable[[str], bool]] = {
        "global": lambda name: hasattr(module, name) and name in init_names,
        "method": lambda name: callable(getattr(syncobj, name, None)),
        "state": lambda name: name in init_names,
    }
    return [
        f"pysyncobj.syncobj.{name}" if kind == "global" else f"SyncObj.{name}"
        for kind, name in RELIED_ON
        if not present[kind](name)
    ]


def check_pysyncobj(module: ModuleType) -> None:
    """Refuse, with ImportError, a pysyncobj the overrides were not written for: another
    version, or one that lacks a name in `RELIED_ON`. Run at import, so a daemon never
    starts with some fixes in effect and others silently gone."""
    problems = []
    version = getattr(module, "VERSION", None)  # pysyncobj.version.VERSION
    if version is not None and version != PYSYNCOBJ_VERSION:
        problems.append(f"it is version {version}")
    missing = missing_internals(module)
    if missing:
        problems.append("it lacks " + ", ".join(missing))
    if problems:
        raise ImportError(
            f"symphonyd.raft.node overrides internals of pysyncobj {PYSYNCOBJ_VERSION}, but "
            f"the installed pysyncobj differs: {'; '.join(problems)}. Install "
            f"pysyncobj=={PYSYNCOBJ_VERSION} (pyproject.toml pins it) or port the overrides."
        )
