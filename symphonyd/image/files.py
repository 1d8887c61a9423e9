"""Image files on this node: `<data-dir>/images/sha256/<hex>`, content-addressed.

An import writes to `images/tmp/<id>.part` (created exclusively, 0600) and `publish`
renames it to its checksum's name only once the checksum is known (fsync of the file and
of the folder first), so a name under `sha256/` always holds exactly that content. Same
content imported twice is stored once. No Raft, no store: plain files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re

from symphonyd.durable import fsync_dir

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ImageFiles:
    def __init__(self, data_dir: str) -> None:
        self.root = os.path.join(data_dir, "images")
        self.content_dir = os.path.join(self.root, "sha256")
        self.tmp_dir = os.path.join(self.root, "tmp")
        for path in (self.root, self.content_dir, self.tmp_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def path(self, fingerprint: str) -> str:
        if not HEX64.match(fingerprint):
            raise ValueError(f"not a sha256 fingerprint: {fingerprint!r}")
        return os.path.join(self.content_dir, fingerprint)

    def has(self, fingerprint: str) -> bool:
        return os.path.exists(self.path(fingerprint))

    def fingerprints(self) -> set[str]:
        return {name for name in os.listdir(self.content_dir) if HEX64.match(name)}

    def temp_path(self, image_id: str) -> str:
        return os.path.join(self.tmp_dir, f"{image_id}.part")

    def open_temp(self, image_id: str) -> int:
        return os.open(self.temp_path(image_id), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def discard_temp(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path(image_id))

    def publish(self, image_id: str, fd: int, fingerprint: str) -> str:
        """Move a finished temp file to its content name (or drop it: already there)."""
        os.fsync(fd)
        target = self.path(fingerprint)
        if os.path.exists(target):
            self.discard_temp(image_id)
        else:
            os.rename(self.temp_path(image_id), target)
            os.chmod(target, 0o400)
        fsync_dir(self.content_dir)
        return target

    def remove(self, fingerprint: str) -> bool:
        """Remove a file; False if it was already gone."""
        try:
            os.unlink(self.path(fingerprint))
        except FileNotFoundError:
            return False
        fsync_dir(self.content_dir)
        return True

    def verify(self, fingerprint: str) -> bool:
        """Read the file back and compare its checksum with its name (blocking)."""
        digest = hashlib.sha256()
        with open(self.path(fingerprint), "rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                digest.update(chunk)
        return digest.hexdigest() == fingerprint

    def temp_ids(self) -> set[str]:
        return {n[: -len(".part")] for n in os.listdir(self.tmp_dir) if n.endswith(".part")}

    def clean_temp(self, keep: set[str]) -> None:
        """Remove temp files of imports that are not running (left by a crash)."""
        for name in os.listdir(self.tmp_dir):
            if name.endswith(".part") and name[: -len(".part")] not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.tmp_dir, name))
