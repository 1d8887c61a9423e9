"""The `file` block driver: volumes are files under `<data-dir>/volumes/<pool>/`.

Needs nothing but a directory. A volume is a sparse raw file (`<id>.raw`), or a qcow2
file (`<id>.qcow2`) when it is an overlay on a qcow2 image (an instant clone; needs
qemu-img). A volume made from a raw image is a full sparse copy (the native copier's
sparse copy: its cost follows the image's data, not its size). A qcow2 image becomes a raw
volume with `qemu-img convert`. Resize grows the file; a snapshot is a sparse copy
`<id>@<snapshot>.raw` (or a qcow2 internal snapshot for qcow2 volumes).
Every multi-step operation removes what it made if a later step fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
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
from symphonyd.errors import DriverError, Invalid
from symphonyd.image.copier import CopyError, sparse_copy


class FileDriver:
    name = "file"

    def __init__(self, root: str, qemu_img: str | None = None) -> None:
        self.root = root
        self.qemu_img = qemu_img or shutil.which("qemu-img")
        self.capabilities = Capabilities(snapshots=True, image_overlay=self.qemu_img is not None)
        # 0711: a hypervisor running as another user (qemu) opens a volume by its path
        os.makedirs(root, mode=0o711, exist_ok=True)
        os.chmod(root, 0o711)

    # -- reading ---------------------------------------------------------------------------

    def check(self) -> Health:
        probe = os.path.join(self.root, ".probe")
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            return Health(False, f"pool {self.root} is not writable: {exc.strerror}")
        return Health(True, f"pool {self.root} is writable")

    @host_boundary("read the pool's free space")
    def pool(self) -> PoolInfo:
        st = os.statvfs(self.root)
        return PoolInfo(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)

    @host_boundary("list the pool")
    def volumes(self) -> dict[str, VolumeInfo]:
        found = {}
        for entry in os.scandir(self.root):
            stem, _, ext = entry.name.rpartition(".")
            if ext in ("raw", "qcow2") and VOLUME_ID_RE.match(stem):
                found[stem] = self._info(stem, entry.path, ext)
        return found

    def _info(self, volume_id: str, path: str, fmt: str) -> VolumeInfo:
        st = os.stat(path)
        size = st.st_size if fmt == "raw" else self._qcow2_size(path)
        return VolumeInfo(volume_id, size, st.st_blocks * 512, path, fmt)

    def _path(self, volume_id: str, fmt: str) -> str:
        if not VOLUME_ID_RE.match(volume_id):
            raise Invalid(f"bad volume id {volume_id!r}")
        return os.path.join(self.root, f"{volume_id}.{fmt}")

    def _find(self, volume_id: str) -> VolumeInfo:
        for fmt in ("raw", "qcow2"):
            path = self._path(volume_id, fmt)
            if os.path.exists(path):
                return self._info(volume_id, path, fmt)
        raise NoSuchVolume(f"no volume {volume_id} in pool {self.root}")

    # -- changing ----------------------------------------------------------------------------

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
        if size <= 0:
            raise Invalid("a volume needs a size above zero")
        if any(os.path.exists(self._path(volume_id, f)) for f in ("raw", "qcow2")):
            raise VolumeExists(f"volume {volume_id} already exists")
        if overlay:
            return self._create_overlay(volume_id, size, image, image_format)
        path = self._path(volume_id, "raw")
        try:
            with Reverter() as undo:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                undo.add(_unlink, path)
                try:
                    self._fill(fd, path, size, image, image_format, progress)
                finally:
                    os.close(fd)
                current = os.stat(path).st_size
                if current > size:
                    raise Invalid(f"the image ({current} bytes) is larger than the volume ({size})")
                os.truncate(path, size)
                durable.fsync_path(path)  # qemu-img writes with cache=unsafe: flush it here
                undo.keep()
        except CopyError as exc:
            if exc.errno == errno.ENOSPC:
                raise PoolFull(f"pool {self.root} is full: {exc.message}") from None
            raise
        return self._info(volume_id, path, "raw")

    def _fill(
        self,
        fd: int,
        path: str,
        size: int,
        image: str | None,
        image_format: str | None,
        progress: Progress | None,
    ) -> None:
        """Write the image (if any) into the new volume file open as `fd` at `path`."""
        if image is not None and image_format == "qcow2":
            argv = [str(self.qemu_img or "qemu-img"), "convert", "-O", "raw", "-f", "qcow2"]
            self._run([*argv, image, path], "qemu-img convert")
        elif image is not None:
            src = os.open(image, os.O_RDONLY)
            try:
                if os.fstat(src).st_size > size:
                    raise Invalid(
                        f"the image ({os.fstat(src).st_size} bytes) is larger than the "
                        f"volume ({size} bytes)"
                    )
                sparse_copy(src, fd, progress)
            finally:
                os.close(src)

    def _create_overlay(
        self, volume_id: str, size: int, image: str | None, image_format: str | None
    ) -> VolumeInfo:
        if not self.capabilities.image_overlay:
            raise NotSupported("overlays need qemu-img (apt-get install qemu-utils)")
        if image is None or image_format != "qcow2":
            raise NotSupported("an overlay is made on a qcow2 image")
        path = self._path(volume_id, "qcow2")
        with Reverter() as undo:
            undo.add(_unlink, path)
            self._run(
                [
                    str(self.qemu_img),
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    image,
                    "-F",
                    "qcow2",
                    path,
                    str(size),
                ],
                "qemu-img create",
            )
            durable.fsync_path(path)
            undo.keep()
        return self._info(volume_id, path, "qcow2")

    @host_boundary("resize a volume")
    def resize(self, volume_id: str, size: int) -> VolumeInfo:
        info = self._find(volume_id)
        if size < info.size:
            raise NotSupported(f"volumes only grow ({info.size} -> {size} bytes refused)")
        if info.format == "raw":
            os.truncate(info.path, size)
        else:
            self._run([str(self.qemu_img), "resize", "-q", info.path, str(size)], "qemu-img resize")
        return self._find(volume_id)

    @host_boundary("snapshot a volume")
    def snapshot(self, volume_id: str, snapshot_id: str) -> VolumeInfo:
        if not SNAPSHOT_NAME_RE.match(snapshot_id):
            raise Invalid(f"bad snapshot name {snapshot_id!r}")
        info = self._find(volume_id)
        if info.format == "qcow2":
            self._run(
                [str(self.qemu_img), "snapshot", "-c", snapshot_id, info.path], "qemu-img snapshot"
            )
            return info
        target = os.path.join(self.root, f"{volume_id}@{snapshot_id}.raw")
        if os.path.exists(target):
            raise VolumeExists(f"snapshot {snapshot_id} of {volume_id} already exists")
        with Reverter() as undo:
            src = os.open(info.path, os.O_RDONLY)
            try:
                dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                undo.add(_unlink, target)
                try:
                    sparse_copy(src, dst)
                    os.fsync(dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            undo.keep()
        return VolumeInfo(volume_id, info.size, os.stat(target).st_blocks * 512, target, "raw")

    @host_boundary("delete a volume")
    def delete(self, volume_id: str) -> None:
        info = self._find(volume_id)
        os.unlink(info.path)
        for entry in os.scandir(self.root):
            if entry.name.startswith(f"{volume_id}@"):
                os.unlink(entry.path)

    # -- helpers ------------------------------------------------------------------------------

    def _qcow2_size(self, path: str) -> int:
        with open(path, "rb") as f:
            head = f.read(32)
        return int.from_bytes(head[24:32], "big") if head[:4] == b"QFI\xfb" else 0

    def _run(self, argv: list[str], what: str) -> None:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        except FileNotFoundError:
            raise NotSupported(f"{what} needs qemu-img (apt-get install qemu-utils)") from None
        if result.returncode != 0:
            raise DriverError(f"{what} failed: {result.stderr.strip() or result.stdout.strip()}")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@register("file")
def open_file_pool(pool: str, data_dir: str, **options: Any) -> FileDriver:
    """The pool of a file service is the directory `<data-dir>/volumes/<pool>/`."""
    return FileDriver(os.path.join(data_dir, "volumes", pool), **options)
