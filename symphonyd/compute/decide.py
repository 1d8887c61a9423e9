"""What the compute agent decides for one instance, purely: from its record, its root
volume record and the domain its node has, the actions still to do (no I/O, no clock;
tested without a cluster). The agent (`compute/agent.py`) acts on them.

The power state: a `creating` instance (placed by its create entry, or claimed after the
leader placed it) has its seed written while its root volume is made, and is defined and
started once the volume is ready; a defined
one whose domain the host lost is defined again; `starting` starts, a `stopped` wish
stops; a domain that stops without being asked makes the instance `stopped` with the
reason, never started again. The definition: `applied` (what the domain's definition
holds) is compared with the record; resizes and attaches are applied (live where the
driver can, otherwise in the definition), a detach of a disk a running guest still holds
waits for it to stop when the driver cannot hot-unplug. A move (state/moves.py): the
node it leaves stops it, records the copies of its volumes on the target, and switches
it there once they are ready (or aborts when one fails); the target builds it, and
finishes the move once it runs (or rests, if it was stopped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from symphonyd.compute.driver import DomainInfo
from symphonyd.reconcile import Action

__all__ = ["decide_instance", "detach_note", "disk_targets"]


def detach_note(volume_id: str) -> str:
    return f"volume {volume_id[:12]} is detached when the instance next stops"


def decide_instance(
    instance: Mapping[str, Any],
    root: Mapping[str, Any] | None,
    domain: DomainInfo | None,
    listed: bool,
    hotplug: bool = False,
    copies: Sequence[Mapping[str, Any]] = (),
    seeded: bool = False,
) -> list[Action]:
    """What is left to do for one instance, given its root volume record and its domain
    (`listed`: whether the host's domains are known at all; `hotplug`: whether its driver
    can attach and detach disks of a running domain; `copies`: the volume copies of a
    move in progress; `seeded`: whether its cloud-init seed is written)."""
    status = instance["status"]
    if status == "deleting":
        return [Action("remove")]
    moving = _move(instance, status, copies)
    if moving is not None:
        return moving
    if status == "pending":
        return [Action("claim")]
    if status == "failed":
        return []
    if status == "creating":
        if root is None:
            return [Action("fail", "its root volume is gone")]
        if root["status"] == "failed":
            return [Action("fail", f"its root volume failed: {root['status_message']}")]
        if root["status"] != "ready":  # woken when the volume changes
            return [] if seeded else [Action("seed")]  # written while the disk is made
        return [Action("build")]
    if not listed:
        return []
    if domain is None:
        return [Action("define")]
    power, state = instance["power"], domain.state
    actions: list[Action] = []
    if state in ("running", "paused"):
        if power == "stopped":
            return [Action("stop")]
        if status != "running":
            actions.append(Action("record", {"status": "running", "status_message": ""}))
        if instance.get("restarts", 0) > instance.get("restarts_done", 0):
            actions.append(Action("reboot"))
    elif state in ("stopped", "crashed"):
        if power == "running" and status == "starting":
            actions.append(Action("start"))
        elif status in ("running", "stopping", "starting"):
            why = "the guest was stopped from inside or outside symphonyd"
            if state == "crashed":
                why = f"the guest crashed{': ' + domain.reason if domain.reason else ''}"
            elif status == "stopping":
                why = ""
            actions.append(
                Action("record", {"status": "stopped", "power": "stopped", "status_message": why})
            )
    seen = {"vcpus": domain.vcpus, "memory": domain.memory}
    if instance.get("domain") != seen and not any(a.verb == "record" for a in actions):
        actions.append(Action("record", {"domain": seen}))
    actions += _definition_changes(instance, state, hotplug)
    phase = (instance.get("move") or {}).get("phase")
    settled = (status, state) in (("running", "running"), ("stopped", "stopped"))
    if phase == "switched" and settled and instance["power"] == status and not actions:
        actions.append(Action("finish move"))  # it runs (or rests) on its new node
    return actions


def _move(
    instance: Mapping[str, Any], status: str, copies: Sequence[Mapping[str, Any]]
) -> list[Action] | None:
    """The steps of a move on the node the instance leaves (None: no move step now)."""
    move = instance.get("move") or {}
    phase = move.get("phase")
    if phase == "stopping" and status == "stopped":
        return [Action("copy out")]
    if phase != "copying":
        return None
    wanted = set((move.get("volumes") or {}).values())
    for copy in copies:
        if copy["status"] == "failed":
            return [Action("abort move", f"copying {copy['name']}: {copy['status_message']}")]
    if wanted - {c["id"] for c in copies}:
        return [Action("abort move", "a copy of its volumes was removed")]
    if all(c["status"] == "ready" for c in copies):
        return [Action("switch")]
    return []  # copying: woken when a copy changes


def _definition_changes(instance: Mapping[str, Any], state: str, hotplug: bool) -> list[Action]:
    """Resizes, attaches and detaches the domain's definition lacks (`applied`)."""
    applied = instance.get("applied")
    if applied is None:  # defined by a version that did not record it
        return [Action("adopt")]
    actions = []
    if (applied.get("cpus"), applied.get("memory")) != (instance["cpus"], instance["memory"]):
        actions.append(Action("resize"))
    held = applied.get("volumes") or {}
    wanted = list(instance.get("volumes", []))
    actions += [Action("attach", vid) for vid in wanted if vid not in held]
    running = state in ("running", "paused", "stopping")
    notes = instance.get("at_next_start") or []
    for vid in sorted(set(held) - set(wanted)):
        if running and not hotplug:  # the guest still uses it: wait for it to stop
            if detach_note(vid) not in notes:
                actions.append(Action("defer detach", vid))
        else:
            actions.append(Action("detach", vid))
    return actions


def disk_targets(count: int) -> list[str]:
    """Disk targets of data volumes: vdb, vdc, ... (vda is the root disk)."""
    return ["vd" + chr(ord("b") + i) for i in range(min(count, 24))]
