"""Disk image formats, told from the file's first bytes (never from its name).

qcow2: magic `QFI\\xfb`, virtual size in the header (bytes 24-31, big-endian).
iso:   `CD001` at byte 32769 (the primary volume descriptor of ISO 9660).
raw:   anything else; `recognised` is False when nothing marks it as a disk image.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
ISO_OFFSET = 32769
MBR_SIGNATURE_OFFSET = 510


@dataclass(frozen=True)
class ImageFormat:
    format: str  # "qcow2", "iso" or "raw"
    virtual_size: int
    recognised: bool  # False: not a known disk image; accepted as raw


def detect(fd: int, size: int) -> ImageFormat:
    head = os.pread(fd, 512, 0)
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        (virtual_size,) = struct.unpack(">Q", head[24:32])
        return ImageFormat("qcow2", virtual_size, True)
    if size >= ISO_OFFSET + 5 and os.pread(fd, 5, ISO_OFFSET) == b"CD001":
        return ImageFormat("iso", size, True)
    # A raw disk: an MBR boot signature (also present on GPT's protective MBR).
    has_mbr = len(head) == 512 and head[MBR_SIGNATURE_OFFSET:] == b"\x55\xaa"
    return ImageFormat("raw", size, has_mbr)
