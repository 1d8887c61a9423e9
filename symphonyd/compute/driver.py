"""The interface every compute driver implements, its capability flags, its errors and the
plain values it takes and gives.

A compute driver runs the virtual machines of this host. It is given plain values (a
`DomainSpec` built from an instance record, paths of volumes and seeds on this host) and
returns plain values (`DomainInfo`, `HostInfo`); it never reads or writes the replicated
store. Every method may block (a libvirt call to a busy daemon takes seconds): callers run
it in a thread, except `watch`, which is called on the event loop and delivers its events
there.

Domains are found by instance id: a driver names and tags the domains it defines so that
`domains()` gives, for each, the instance id it was defined for (`managed`), and lists the
host's other domains as unmanaged (reported, never touched).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from symphonyd.drivers import Health
from symphonyd.errors import Conflict, DriverError, Invalid, NotFound

__all__ = [
    "STATES",
    "Capabilities",
    "ComputeDriver",
    "DiskSpec",
    "DomainEvent",
    "DomainExists",
    "DomainInfo",
    "DomainSpec",
    "HostInfo",
    "NoSuchDomain",
    "NotSupported",
    "Unreachable",
    "check_options",
]

# What a domain is doing, as drivers report it (libvirt's states, folded):
# running, paused, stopped (shut off, or never started), crashed, stopping (shutting down).
STATES = ("running", "paused", "stopped", "crashed", "stopping")


class NotSupported(Invalid):
    """The driver cannot do this (see its capabilities)."""


class NoSuchDomain(NotFound):
    """The host has no domain for this instance."""


class DomainExists(Conflict):
    """A domain for this instance, or with its name, already exists."""


class Unreachable(DriverError):
    """The hypervisor does not answer (libvirtd stopped, socket gone)."""


@dataclass(frozen=True)
class Capabilities:
    hotplug_disks: bool  # attach/detach a disk to a running domain
    live_resize: bool  # change vcpus/memory of a running domain (up to its maximum)
    graceful_shutdown: bool  # an ACPI shutdown the guest acts on


@dataclass(frozen=True)
class DiskSpec:
    path: str  # a file or block device on this host
    format: str  # "raw" or "qcow2"
    target: str  # "vda", "vdb", ...
    serial: str  # what the guest sees in /dev/disk/by-id (a volume id, at most 20 chars)


@dataclass(frozen=True)
class DomainSpec:
    """One domain as an instance record asks for it."""

    instance_id: str  # 32 hex digits (the store's ids); the domain's UUID
    name: str  # the instance name (a hostname)
    vcpus: int
    memory: int  # bytes
    disks: tuple[DiskSpec, ...]
    console_log: str  # where the serial console is written
    seed: str | None = None  # the cloud-init NoCloud ISO, as a CD-ROM
    network: str = "user"  # "user", or "bridge=NAME" (an existing host bridge)
    max_vcpus: int = 0  # 0: vcpus (live growth up to this)
    max_memory: int = 0  # 0: memory


@dataclass(frozen=True)
class DomainInfo:
    instance_id: str | None  # None: not a domain symphonyd defined (unmanaged)
    name: str  # the domain's libvirt name
    state: str  # one of STATES
    reason: str = ""  # why it is in that state, when libvirt says (e.g. "crashed: panicked")
    vcpus: int = 0
    memory: int = 0  # bytes
    disks: tuple[str, ...] = ()  # disk source paths, in target order


@dataclass(frozen=True)
class HostInfo:
    cpus: int
    memory: int  # bytes
    hypervisor: str  # e.g. "TEST 0.0.2", "QEMU 7.2.0"
    virt_type: str  # what domains are defined with: "kvm", "qemu" or "test"


@dataclass(frozen=True)
class DomainEvent:
    """A lifecycle change libvirt announced (delivered on the event loop)."""

    instance_id: str | None
    name: str
    event: str  # "defined", "undefined", "started", "stopped", "suspended", "resumed", ...
    detail: str = ""


class ComputeDriver(Protocol):
    name: str
    capabilities: Capabilities

    def check(self) -> Health: ...
    def host(self) -> HostInfo: ...
    def domains(self) -> list[DomainInfo]: ...
    def define(self, spec: DomainSpec) -> DomainInfo:
        """Define (or redefine, same UUID) the domain of `spec`; it is not started."""
        ...

    def start(self, instance_id: str) -> None: ...
    def shutdown(self, instance_id: str) -> None:
        """Ask the guest to power off (ACPI); returns at once. `stopped` comes later."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Power off at once (no-op when already off)."""
        ...

    def reboot(self, instance_id: str) -> None: ...
    def undefine(self, instance_id: str) -> None:
        """Remove the domain's definition (off first); NoSuchDomain when there is none."""
        ...

    def set_vcpus(self, instance_id: str, vcpus: int, live: bool) -> None: ...
    def set_memory(self, instance_id: str, memory: int, live: bool) -> None: ...
    def attach_disk(self, instance_id: str, disk: DiskSpec, live: bool) -> None: ...
    def detach_disk(self, instance_id: str, target: str, live: bool) -> None: ...
    def watch(self, on_event: Callable[[DomainEvent | None], None]) -> None:
        """Deliver lifecycle events to `on_event` on the running event loop (call it
        there). None means the connection was lost and events may have been missed."""
        ...

    def close(self) -> None: ...


# The options of the libvirt driver (service options, settings `[compute] options`).
DRIVER_OPTIONS: dict[str, dict[str, type]] = {
    "libvirt": {
        "uri": str,  # "" (default): this node's own libvirt test driver
        "virt_type": str,  # auto | kvm | qemu
        "machine": str,  # a machine type, e.g. "pc" or "q35" ("": the hypervisor's default)
        "test_cpus": int,  # the test driver's host CPUs (0: this host's)
        "test_memory": int,  # the test driver's host memory in bytes (0: this host's)
    }
}


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Driver options with their declared types (text given for a number is read)."""
    if name not in DRIVER_OPTIONS:
        raise Invalid(f"unknown compute driver {name!r} (known: {', '.join(DRIVER_OPTIONS)})")
    if not isinstance(options, Mapping):
        raise Invalid("driver options must be a mapping of names to values")
    declared, checked = DRIVER_OPTIONS[name], {}
    for key, value in options.items():
        if key not in declared:
            raise Invalid(f"unknown {name} option {key!r} (known: {', '.join(sorted(declared))})")
        kind = declared[key]
        if kind is int and isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Invalid(f"{name} option {key!r} must be {kind.__name__}, not {value!r}")
        checked[key] = value
    virt_type = checked.get("virt_type", "auto")
    if virt_type not in ("auto", "kvm", "qemu"):
        raise Invalid(f"virt_type must be auto, kvm or qemu, not {virt_type!r}")
    return checked
