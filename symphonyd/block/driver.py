"""The interface every block driver implements, its capability flags, its errors, and the
registry from driver names to constructors.

A driver manages volumes of one pool on this host. It is given plain values (ids, sizes,
paths of verified image files) and returns plain values (`VolumeInfo`); it never reads or
writes the replicated store. Every method may block: callers run it in a thread.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from symphonyd.drivers import Health
from symphonyd.errors import Conflict, DriverError, Invalid, NotFound
from symphonyd.validation import NAME_RE

# Called with the bytes of the image copied so far; returning True cancels the copy.
Progress = Callable[[int], bool]


class NotSupported(Invalid):
    """The driver cannot do this (see its capabilities)."""


class VolumeExists(Conflict):
    """A volume with this id already exists in the pool."""


class NoSuchVolume(NotFound):
    """The pool holds no volume with this id."""


class PoolFull(DriverError):
    """Not enough free space in the pool."""


# What a driver accepts as a volume id (the store's uuid4 hex) and as a snapshot name.
VOLUME_ID_RE = re.compile(r"^[0-9a-f]{32}$")
SNAPSHOT_NAME_RE = NAME_RE


@dataclass(frozen=True)
class Capabilities:
    snapshots: bool
    image_overlay: bool  # a volume can be a copy-on-write overlay of a qcow2 image
    shrink: bool = False


@dataclass(frozen=True)
class VolumeInfo:
    id: str
    size: int  # virtual size in bytes
    allocated: int  # bytes used on the host
    path: str
    format: str  # "raw" or "qcow2"


@dataclass(frozen=True)
class PoolInfo:
    total: int
    free: int


class BlockDriver(Protocol):
    name: str
    capabilities: Capabilities

    def check(self) -> Health: ...
    def pool(self) -> PoolInfo: ...
    def volumes(self) -> dict[str, VolumeInfo]: ...
    def create(
        self,
        volume_id: str,
        size: int,
        image: str | None = None,
        image_format: str | None = None,
        overlay: bool = False,
        progress: Progress | None = None,
    ) -> VolumeInfo: ...
    def resize(self, volume_id: str, size: int) -> VolumeInfo: ...
    def snapshot(self, volume_id: str, snapshot_id: str) -> VolumeInfo: ...
    def delete(self, volume_id: str) -> None: ...


# Each driver registers a function that opens one pool: (pool, data_dir, **options).
DRIVERS: dict[str, Callable[..., BlockDriver]] = {}
# Where each driver lives; a module registers its driver when it is imported.
DRIVER_MODULES = {"file": "symphonyd.block.file", "lvm": "symphonyd.block.lvm"}


# The options each driver takes (service options, settings `[block] options`), by type.
DRIVER_OPTIONS: dict[str, dict[str, type]] = {"file": {}, "lvm": {"metadata_only": bool}}


def capabilities(name: str, options: dict[str, Any]) -> tuple[Capabilities, str]:
    """What a driver with these options can do, known without opening it (the node that
    answers a request may not have the driver's tools), and why not where it cannot."""
    if name == "lvm" and options.get("metadata_only"):
        why = "the lvm pool is in metadata-only mode (no device-mapper): no snapshots"
        return Capabilities(snapshots=False, image_overlay=False), why
    if name == "lvm":
        return Capabilities(snapshots=True, image_overlay=False), ""
    return Capabilities(snapshots=True, image_overlay=True), ""


def check_options(name: str, options: object) -> dict[str, Any]:
    """Driver options with their declared types ("true"/"false" text becomes a bool)."""
    if name not in DRIVER_OPTIONS:
        known = ", ".join(sorted(DRIVER_OPTIONS))
        raise Invalid(f"unknown block driver {name!r} (known: {known})")
    if not isinstance(options, dict):
        raise Invalid("driver options must be a mapping of names to values")
    declared, checked = DRIVER_OPTIONS[name], {}
    for key, value in options.items():
        if key not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise Invalid(f"the {name} driver has no option {key!r} (options: {allowed})")
        if declared[key] is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise Invalid(f"option {key} takes true or false, not {value!r}")
            value = value.lower() in ("true", "yes", "1")
        if not isinstance(value, declared[key]):
            raise Invalid(f"option {key} must be {declared[key].__name__}, not {value!r}")
        checked[key] = value
    return checked


def register(name: str) -> Callable[[Callable[..., BlockDriver]], Callable[..., BlockDriver]]:
    def add(constructor: Callable[..., BlockDriver]) -> Callable[..., BlockDriver]:
        DRIVERS[name] = constructor
        return constructor

    return add


def make_driver(name: str, pool: str, data_dir: str, **options: Any) -> BlockDriver:
    """The driver `name` for one pool of this host (a directory, a volume group, ...)."""
    if name not in DRIVERS and name in DRIVER_MODULES:
        importlib.import_module(DRIVER_MODULES[name])
    if name not in DRIVERS:
        raise Invalid(f"unknown block driver {name!r} (known: {', '.join(sorted(DRIVERS))})")
    return DRIVERS[name](pool, data_dir, **options)
