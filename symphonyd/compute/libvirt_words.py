"""libvirt's numbers in words, for the `libvirt` compute driver.

Pure tables of libvirt's enums, in their order: domain states (virDomainState) as libvirt
names them and folded to the driver's states, the reasons of those states that have some
(virDomain<State>Reason), lifecycle events (virDomainEventType) and their details
(virDomainEvent<Event>DetailType), and why a connection closed (virConnectCloseReason). A
number these tables do not know (a newer libvirt's) reads as its digits.

It must not import libvirt (the numbers are libvirt's, fixed by its ABI), nor the store,
Raft or the API.
"""

from __future__ import annotations

__all__ = ["close_reason", "domain_state", "lifecycle_event"]

# "libvirt's name:folded" by virDomainState; the reasons of the states that have some.
_STATES = "nostate:running running:running blocked:running paused:paused shutdown:stopping "
_STATES += "shutoff:stopped crashed:crashed pmsuspended:paused"
_REASONS = {
    1: "unknown booted migrated restored from-snapshot unpaused migration-canceled "
    "save-canceled wakeup crashed postcopy postcopy-failed",
    3: "unknown user migration save dump ioerror watchdog from-snapshot shutting-down "
    "snapshot crashed starting-up postcopy postcopy-failed api-error",
    4: "unknown user",
    5: "unknown shutdown destroyed crashed migrated saved failed from-snapshot daemon",
    6: "unknown panicked",
}
_EVENTS = "defined undefined started suspended resumed stopped shutdown pmsuspended crashed"
_DETAILS = (
    "added updated renamed from-snapshot",
    "removed renamed",
    "booted migrated restored from-snapshot wakeup",
    "paused migrated ioerror watchdog restored from-snapshot api-error postcopy postcopy-failed",
    "unpaused migrated from-snapshot postcopy postcopy-failed",
    "shutdown destroyed crashed migrated saved failed from-snapshot",
    "finished guest host",
    "memory disk",
    "panicked crashloaded",
)
_CLOSE_REASONS = "error end-of-file keepalive client"


def _word(words: str, index: int) -> str:
    table = words.split()
    return table[index] if 0 <= index < len(table) else str(index)


def domain_state(state: int, reason: int) -> tuple[str, str]:
    """`virDomainGetState`'s pair as DomainInfo's state and reason: the folded state
    ("stopped" when unknown) and "<libvirt's state>: <reason>" ("" when the reason is
    unknown)."""
    raw, _, folded = _word(_STATES, state).partition(":")
    why = _word(_REASONS.get(state, "unknown"), reason)
    return folded or "stopped", f"{raw}: {why}" if why != "unknown" else ""


def lifecycle_event(event: int, detail: int) -> tuple[str, str]:
    """A lifecycle callback's event and detail, in words."""
    details = _DETAILS[event] if 0 <= event < len(_DETAILS) else ""
    return _word(_EVENTS, event), _word(details, detail)


def close_reason(reason: int) -> str:
    """A close callback's reason, in words."""
    return _word(_CLOSE_REASONS, reason)
