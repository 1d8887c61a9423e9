"""A tiny bootable disk image made here, so that a machine can be booted with nothing
downloaded: a raw disk whose boot sector sets up the first serial port, prints `MARKER`
there, then waits for the ACPI power button and powers the machine off when it is
pressed (an ACPI shutdown a guest acts on: `instance stop` without forcing). The quick
start boots it; the real-hypervisor test waits for the marker in the instance's console
log and stops it gracefully.

The power button is read from the ACPI power-management block at 0x600 (where SeaBIOS
puts it on qemu's `pc` and `q35` machines, seen with `info mtree`): PWRBTN_STS (bit 8 of
PM1a_STS, set only once PWRBTN_EN in PM1a_EN is) is polled at each timer tick, and
PM1a_CNT (0x604) is written with SLP_EN and sleep type 0, qemu's soft power-off.

    python -m symphonyd.compute.testimage OUT.raw

The machine code (16-bit real mode, loaded at 0x7c00 by the BIOS) is written out below
instruction by instruction.
"""

from __future__ import annotations

import sys

__all__ = ["MARKER", "boot_sector", "write_image"]

MARKER = b"symphonyd: the boot sector runs\r\n"
LOAD_ADDRESS = 0x7C00
IMAGE_SIZE = 1 << 20  # one MiB: a raw disk of a whole number of sectors

_CODE = bytes(
    [
        0xFA,  # 00 cli
        0x31, 0xC0,  # 01 xor ax, ax
        0x8E, 0xD8,  # 03 mov ds, ax
        0xBA, 0xF9, 0x03,  # 05 mov dx, 0x3f9 (interrupt enable register)
        0xEE,  # 08 out dx, al: no interrupts
        0xBA, 0xFB, 0x03,  # 09 mov dx, 0x3fb (line control)
        0xB0, 0x80,  # 0c mov al, 0x80
        0xEE,  # 0e out dx, al: divisor latch on
        0xBA, 0xF8, 0x03,  # 0f mov dx, 0x3f8
        0xB0, 0x01,  # 12 mov al, 1
        0xEE,  # 14 out dx, al: divisor 1 (115200 baud)
        0xBA, 0xF9, 0x03,  # 15 mov dx, 0x3f9
        0x30, 0xC0,  # 18 xor al, al
        0xEE,  # 1a out dx, al: divisor high byte 0
        0xBA, 0xFB, 0x03,  # 1b mov dx, 0x3fb
        0xB0, 0x03,  # 1e mov al, 3
        0xEE,  # 20 out dx, al: 8 bits, no parity, 1 stop bit
        0xBE, 0x58, 0x7C,  # 21 mov si, 0x7c58 (the message, below)
        0xAC,  # 24 next: lodsb
        0x84, 0xC0,  # 25 test al, al
        0x74, 0x12,  # 27 jz button (0x3b)
        0x88, 0xC4,  # 29 mov ah, al
        0xBA, 0xFD, 0x03,  # 2b mov dx, 0x3fd (line status)
        0xEC,  # 2e wait: in al, dx
        0xA8, 0x20,  # 2f test al, 0x20 (transmitter empty)
        0x74, 0xFB,  # 31 jz wait (0x2e)
        0x88, 0xE0,  # 33 mov al, ah
        0xBA, 0xF8, 0x03,  # 35 mov dx, 0x3f8
        0xEE,  # 38 out dx, al
        0xEB, 0xE9,  # 39 jmp next (0x24)
        0xBA, 0x02, 0x06,  # 3b button: mov dx, 0x602 (ACPI PM1a enable)
        0xB8, 0x00, 0x01,  # 3e mov ax, 0x100 (power button enable: else no status)
        0xEF,  # 41 out dx, ax
        0xFB,  # 42 sti (the BIOS timer wakes hlt 18 times a second)
        0xF4,  # 43 poll: hlt
        0xBA, 0x00, 0x06,  # 44 mov dx, 0x600 (ACPI PM1a status)
        0xED,  # 47 in ax, dx
        0xA9, 0x00, 0x01,  # 48 test ax, 0x100 (power button pressed)
        0x74, 0xF6,  # 4b jz poll (0x43)
        0xB8, 0x00, 0x20,  # 4d mov ax, 0x2000 (sleep enable, sleep type 0: soft off)
        0xBA, 0x04, 0x06,  # 50 mov dx, 0x604 (ACPI PM1a control)
        0xEF,  # 53 out dx, ax: power off
        0xFA,  # 54 cli
        0xF4,  # 55 halt: hlt
        0xEB, 0xFD,  # 56 jmp halt (0x55)
    ]
)  # fmt: skip
_MESSAGE_OFFSET = 0x58


def boot_sector() -> bytes:
    """The 512-byte boot sector: the code, the message, zeros, the 0x55 0xaa signature."""
    assert len(_CODE) == _MESSAGE_OFFSET
    body = _CODE + MARKER + b"\0"
    if len(body) > 510:
        raise ValueError("the boot sector's code and message do not fit in 510 bytes")
    return body.ljust(510, b"\0") + b"\x55\xaa"


def write_image(path: str) -> None:
    """Write the raw disk image (one MiB: the boot sector, then zeros)."""
    with open(path, "wb") as f:
        f.write(boot_sector())
        f.truncate(IMAGE_SIZE)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m symphonyd.compute.testimage OUT.raw")
    write_image(sys.argv[1])
