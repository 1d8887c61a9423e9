"""The `lvm` block driver: volumes are logical volumes of one volume group, made with the
real lvm2 commands (their `--reportformat json` reports are parsed, never their prose).

`LvmHost` is the host's LVM: physical volumes and volume groups (`block pv ...`,
`block vg ...`). `LvmDriver` is one volume group as a pool: a volume `<id>` is the LV
`sy-<id>`, its snapshots are `sy-<id>_<snapshot>` (classic copy-on-write snapshots as
large as their origin, so they never overflow). A new LV is zeroed whole (BLKZEROOUT)
before anything is written into it, so no data of an earlier LV shows through; a raw
image is then written with the native sparse copy and a qcow2 image with
`qemu-img convert -n --target-is-zero`.

Metadata-only mode (`metadata_only`, for hosts whose kernel has no device-mapper, such as
the development machines): every changing command gets `--driverloaded n`, LVs are made
with `-an -Zn` and never activated. What needs an active LV (writing an image, snapshots)
is refused with a clear message; everything else runs the same commands as the
activating path.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from typing import Any

from symphonyd import durable
from symphonyd.block.driver import (
    SNAPSHOT_NAME_RE,
    VOLUME_ID_RE,
    Capabilities,
    Health,
    NoSuchVolume,
    NotSupported,
    PoolFull,
    PoolInfo,
    Progress,
    VolumeExists,
    VolumeInfo,
    register,
)
from symphonyd.drivers import Reverter, host_boundary
from symphonyd.errors import Conflict, DriverError, Invalid, NotFound
from symphonyd.image.copier import CopyError, sparse_copy

_VOLUME_LV = re.compile(r"^sy-([0-9a-f]{32})$")
_VG_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NOISE = (
    "WARNING: Activation disabled",
    "WARNING: Skipping zeroing",
    "/dev/mapper/control: open failed",
    "Failure to communicate with kernel device-mapper",
    "Check that device-mapper is available",
    "Incompatible libdevmapper",
)
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
COMMAND_TIMEOUT = 600


@dataclass(frozen=True)
class PhysicalVolume:
    device: str
    size: int
    free: int
    vg: str  # "" when in no volume group


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    size: int
    free: int
    lv_count: int
    pv_count: int


class LvmHost:
    """The lvm2 commands of this host."""

    def __init__(self, metadata_only: bool = False) -> None:
        self.metadata_only = metadata_only
        self.change_flags = ["--driverloaded", "n"] if metadata_only else []

    # -- running commands ---------------------------------------------------------------------

    def run(self, argv: list[str], what: str) -> str:
        if shutil.which(argv[0]) is None:
            raise NotSupported("lvm2 is not installed on this node (apt-get install lvm2)")
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,  # a prompt is answered "no"
                env=env,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise DriverError(f"{what}: {argv[0]} did not finish in {COMMAND_TIMEOUT} s") from None
        if result.returncode != 0:
            raise DriverError(f"{what} failed: {self.explain(result.stderr or result.stdout)}")
        return result.stdout

    @staticmethod
    def explain(output: str) -> str:
        lines = [line.strip() for line in output.splitlines()]
        useful = [line for line in lines if line and not line.startswith(_NOISE)]
        return "; ".join(useful) or "no message"

    def report(self, command: str, kind: str, fields: str, *targets: str) -> list[dict[str, str]]:
        flags = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields]
        out = self.run([command, *flags, *targets], command)
        try:
            reports = json.loads(out)["report"]
            return [row for report in reports for row in report.get(kind, [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise DriverError(f"{command} gave a report that cannot be read: {exc}") from None

    # -- physical volumes ---------------------------------------------------------------------

    def physical_volumes(self) -> dict[str, PhysicalVolume]:
        rows = self.report("pvs", "pv", "pv_name,pv_size,pv_free,vg_name")
        return {
            row["pv_name"]: PhysicalVolume(
                row["pv_name"], _bytes(row["pv_size"]), _bytes(row["pv_free"]), row["vg_name"]
            )
            for row in rows
        }

    def create_pv(self, device: str) -> PhysicalVolume:
        check_device(device)
        existing = self.physical_volumes().get(device)
        if existing is not None:
            where = f" of volume group {existing.vg}" if existing.vg else ""
            raise Conflict(f"{device} is already a physical volume{where}")
        # No -y: pvcreate refuses a device holding a filesystem or partition table.
        self.run(["pvcreate", *self.change_flags, device], f"pvcreate {device}")
        created = self.physical_volumes().get(device)
        if created is None:
            raise DriverError(f"pvcreate {device} succeeded but pvs does not list it")
        return created

    def remove_pv(self, device: str) -> None:
        existing = self.physical_volumes().get(device)
        if existing is None:
            return
        if existing.vg:
            raise Conflict(f"{device} belongs to volume group {existing.vg}: remove that first")
        self.run(["pvremove", *self.change_flags, device], f"pvremove {device}")

    # -- volume groups ------------------------------------------------------------------------

    def volume_groups(self) -> dict[str, VolumeGroup]:
        rows = self.report("vgs", "vg", "vg_name,vg_size,vg_free,lv_count,pv_count")
        return {
            row["vg_name"]: VolumeGroup(
                row["vg_name"],
                _bytes(row["vg_size"]),
                _bytes(row["vg_free"]),
                int(row["lv_count"] or 0),
                int(row["pv_count"] or 0),
            )
            for row in rows
        }

    def create_vg(self, name: str, devices: list[str]) -> VolumeGroup:
        if not _VG_NAME.match(name):
            raise Invalid(f"bad volume group name {name!r}")
        if name in self.volume_groups():
            raise Conflict(f"volume group {name} already exists on this node")
        pvs = self.physical_volumes()
        for device in devices:
            if device not in pvs:
                raise NotFound(f"{device} is not a physical volume")
            if pvs[device].vg:
                raise Conflict(f"{device} already belongs to volume group {pvs[device].vg}")
        self.run(["vgcreate", *self.change_flags, name, *devices], f"vgcreate {name}")
        return self.volume_groups()[name]

    def remove_vg(self, name: str) -> None:
        group = self.volume_groups().get(name)
        if group is None:
            return
        if group.lv_count:
            raise Conflict(f"volume group {name} still holds {group.lv_count} logical volumes")
        self.run(["vgremove", *self.change_flags, name], f"vgremove {name}")


def device_mapper_present(misc: str = "/proc/misc") -> bool:
    """Whether this kernel has device-mapper (its misc device is registered)."""
    try:
        with open(misc) as f:
            return any(line.split()[-1:] == ["device-mapper"] for line in f)
    except OSError:
        return False


def check_device_path(device: object) -> str:
    """An absolute device path without `..`, spaces or control characters (any host)."""
    if not isinstance(device, str) or not device.startswith("/") or ".." in device.split("/"):
        raise Invalid(f"{device!r} is not an absolute device path (e.g. /dev/sdb)")
    if any(c.isspace() or ord(c) < 32 for c in device):
        raise Invalid(f"{device!r} is not a device path")
    return device


def check_device(device: str) -> None:
    """An existing block device of this host, at a path `check_device_path` accepts."""
    check_device_path(device)
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise NotFound(f"no device {device} on this node") from None
    except OSError as exc:
        raise Invalid(f"cannot use {device}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise Invalid(f"{device} is not a block device")


def _bytes(text: str) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        raise DriverError(f"lvm2 reported a size that is not a number: {text!r}") from None


def zero_device(path: str, length: int) -> None:
    """Zero the first `length` bytes of a block device (the kernel uses the device's
    write-zeroes or discard support when it has one, and writes zeros otherwise)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        length -= length % 512
        if length:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", 0, length))
    finally:
        os.close(fd)


def write_image(
    device: str,
    image: str,
    image_format: str,
    qemu_img: str | None,
    progress: Progress | None = None,
) -> None:
    """Write a verified image into a block device already zeroed: holes are skipped."""
    device_size = _device_size(device)
    if image_format == "qcow2":
        if qemu_img is None:
            raise NotSupported("a qcow2 image needs qemu-img (apt-get install qemu-utils)")
        argv = [qemu_img, "convert", "-n", "--target-is-zero", "-f", "qcow2", "-O", "raw"]
        result = subprocess.run(
            [*argv, image, device], capture_output=True, text=True, timeout=3600
        )
        if result.returncode != 0:
            raise DriverError(f"qemu-img convert failed: {result.stderr.strip()}")
        durable.fsync_path(device)  # qemu-img writes with cache=unsafe
        return
    src = os.open(image, os.O_RDONLY)
    try:
        if os.fstat(src).st_size > device_size:
            raise Invalid(
                f"the image ({os.fstat(src).st_size} bytes) is larger than the volume "
                f"({device_size} bytes)"
            )
        dst = os.open(device, os.O_WRONLY)
        try:
            sparse_copy(src, dst, progress)
            os.fsync(dst)
        finally:
            os.close(dst)
    except CopyError as exc:
        raise DriverError(f"writing the image into {device} failed: {exc.message}") from None
    finally:
        os.close(src)


def _device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class LvmDriver:
    """One volume group as a block pool."""

    name = "lvm"

    def __init__(self, vg: str, metadata_only: bool = False, qemu_img: str | None = None) -> None:
        if not _VG_NAME.match(vg):
            raise Invalid(f"bad volume group name {vg!r}")
        self.vg = vg
        self.host = LvmHost(metadata_only)
        self.metadata_only = metadata_only
        self.qemu_img = qemu_img or shutil.which("qemu-img")
        self.capabilities = Capabilities(snapshots=not metadata_only, image_overlay=False)

    # -- reading ----------------------------------------------------------------------------

    def check(self) -> Health:
        mode = " (metadata-only mode: LVs are never activated)" if self.metadata_only else ""
        if not self.metadata_only and not device_mapper_present():
            return Health(
                False,
                "this kernel has no device-mapper (no 'device-mapper' in /proc/misc): logical "
                "volumes cannot be activated here. Load it (modprobe dm_mod), or enable the "
                "service with -o metadata_only=true (volumes are made, grown and removed, "
                "but hold no data and take no snapshots)",
            )
        try:
            groups = self.host.volume_groups()
        except (NotSupported, DriverError) as exc:
            return Health(False, exc.message)
        if self.vg not in groups:
            return Health(True, f"lvm2 answers; volume group {self.vg} does not exist yet{mode}")
        return Health(True, f"volume group {self.vg} answers{mode}")

    @host_boundary("read the volume group's free space")
    def pool(self) -> PoolInfo:
        group = self.host.volume_groups().get(self.vg)
        return PoolInfo(group.size, group.free) if group else PoolInfo(0, 0)

    def _lvs(self) -> list[dict[str, str]]:
        if self.vg not in self.host.volume_groups():
            return []
        return self.host.report("lvs", "lv", "lv_name,lv_size,origin", self.vg)

    @host_boundary("list the volume group")
    def volumes(self) -> dict[str, VolumeInfo]:
        found = {}
        for row in self._lvs():
            match = _VOLUME_LV.match(row["lv_name"])
            if match:
                size = _bytes(row["lv_size"])
                found[match.group(1)] = VolumeInfo(
                    match.group(1), size, size, self._path(row["lv_name"]), "raw"
                )
        return found

    def _path(self, lv: str) -> str:
        return f"/dev/{self.vg}/{lv}"

    def _lv(self, volume_id: str) -> str:
        if not VOLUME_ID_RE.match(volume_id):
            raise Invalid(f"bad volume id {volume_id!r}")
        return f"sy-{volume_id}"

    def _find(self, volume_id: str) -> VolumeInfo:
        info = self.volumes().get(volume_id)
        if info is None:
            raise NoSuchVolume(f"no volume {volume_id} in volume group {self.vg}")
        return info

    # -- changing ---------------------------------------------------------------------------

    @host_boundary("create a volume")
    def create(
        self,
        volume_id: str,
        size: int,
        image: str | None = None,
        image_format: str | None = None,
        overlay: bool = False,
        progress: Progress | None = None,
    ) -> VolumeInfo:
        lv = self._lv(volume_id)
        if size <= 0:
            raise Invalid("a volume needs a size above zero")
        if overlay:
            raise NotSupported("the lvm driver makes full copies, not overlays")
        if image is not None and self.metadata_only:
            raise NotSupported(
                "metadata-only mode: LVs are never activated, so no image can be written into one"
            )
        if volume_id in self.volumes():
            raise VolumeExists(f"volume {volume_id} already exists in {self.vg}")
        group = self.host.volume_groups().get(self.vg)
        if group is None:
            raise NotFound(f"volume group {self.vg} does not exist on this node")
        if size > group.free:
            raise PoolFull(
                f"volume group {self.vg} has {group.free} bytes free; the volume needs {size}"
            )
        activation = ["-an", "-Zn"] if self.metadata_only else ["-ay"]
        with Reverter() as undo:
            argv = ["lvcreate", *self.host.change_flags, *activation, "-L", f"{size}b"]
            self.host.run([*argv, "-n", lv, self.vg], f"lvcreate {self.vg}/{lv}")
            undo.add(self._remove_lv, lv)
            info = self._find(volume_id)
            if not self.metadata_only:
                zero_device(info.path, info.size)
                if image is not None:
                    write_image(info.path, image, image_format or "raw", self.qemu_img, progress)
            undo.keep()
        return info

    @host_boundary("resize a volume")
    def resize(self, volume_id: str, size: int) -> VolumeInfo:
        info = self._find(volume_id)
        if size < info.size:
            raise NotSupported(f"volumes only grow ({info.size} -> {size} bytes refused)")
        if size == info.size:
            return info
        self.host.run(
            [
                "lvextend",
                *self.host.change_flags,
                "-L",
                f"{size}b",
                f"{self.vg}/{self._lv(volume_id)}",
            ],
            f"lvextend {self.vg}/{self._lv(volume_id)}",
        )
        return self._find(volume_id)

    @host_boundary("snapshot a volume")
    def snapshot(self, volume_id: str, snapshot_id: str) -> VolumeInfo:
        if not SNAPSHOT_NAME_RE.match(snapshot_id):
            raise Invalid(f"bad snapshot name {snapshot_id!r}")
        if not self.capabilities.snapshots:
            raise NotSupported(
                "metadata-only mode: LVM snapshots need device-mapper, which this node lacks"
            )
        info = self._find(volume_id)
        name = f"{self._lv(volume_id)}_{snapshot_id}"
        if any(row["lv_name"] == name for row in self._lvs()):
            raise VolumeExists(f"snapshot {snapshot_id} of {volume_id} already exists")
        self.host.run(
            [
                "lvcreate",
                "-s",
                "-L",
                f"{info.size}b",
                "-n",
                name,
                f"{self.vg}/{self._lv(volume_id)}",
            ],
            f"lvcreate snapshot {name}",
        )
        return VolumeInfo(volume_id, info.size, info.size, self._path(name), "raw")

    @host_boundary("delete a volume")
    def delete(self, volume_id: str) -> None:
        lv = self._lv(volume_id)
        rows = self._lvs()
        if not any(row["lv_name"] == lv for row in rows):
            raise NoSuchVolume(f"no volume {volume_id} in volume group {self.vg}")
        for row in rows:  # snapshots first: an origin with snapshots cannot go
            if row["lv_name"].startswith(f"{lv}_"):
                self._remove_lv(row["lv_name"])
        self._remove_lv(lv)

    def _remove_lv(self, lv: str) -> None:
        self.host.run(
            ["lvremove", *self.host.change_flags, "-y", f"{self.vg}/{lv}"],
            f"lvremove {self.vg}/{lv}",
        )


@register("lvm")
def open_lvm_pool(pool: str, data_dir: str, **options: Any) -> LvmDriver:
    """The pool of an lvm service is the name of its volume group."""
    return LvmDriver(vg=pool, metadata_only=bool(options.get("metadata_only", False)))
