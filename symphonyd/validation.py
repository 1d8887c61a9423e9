"""Every validator of user input: names, sizes, durations, numbers, waits.

Each raises `Invalid` with a message a user can act on.
"""

from __future__ import annotations

import re
from datetime import timedelta

from symphonyd.errors import Invalid

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DURATION_RE = re.compile(r"^([0-9]{1,12})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_name(name: object, *, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_uint(text: str, *, what: str) -> int:
    """A non-negative integer written in ASCII digits (not '²' or '٣', which str.isdigit
    accepts), below 2**64."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 2**64:
        raise Invalid(f"'{what}' must be a non-negative integer, not {text!r}")
    return int(text)


MAX_DURATION = timedelta(days=3650)


def parse_duration(text: object) -> timedelta:
    """'90s', '15m', '3h', '7d' -> timedelta."""
    match = DURATION_RE.match(str(text).strip()) if isinstance(text, str | int) else None
    if not match or int(match.group(1)) == 0:
        raise Invalid(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 3h)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise Invalid(f"duration {text!r} is longer than the maximum of 3650d")
    return timedelta(seconds=seconds)


WAIT_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_WAIT_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(text: str, limit: float) -> float:
    """A Consul-style wait: '10s', '500ms', '5m', or seconds; at most `limit`."""
    match = WAIT_RE.match(text.strip())
    if not match:
        raise Invalid(f"'wait' must be a duration like 10s, 500ms or 5m, not {text!r}")
    return min(float(match.group(1)) * _WAIT_UNITS[match.group(2)], limit)


SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
SIZE_UNITS = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 1 << 50


def parse_size(value: object) -> int:
    """'10G', '512M', '1T', a bare number of GiB (as the original CLI), or bytes as int."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := SIZE_RE.match(value)):
        number, unit = float(match.group(1)), match.group(2).upper()
        if number > MAX_SIZE:  # also a number too long for a float (inf)
            raise Invalid(f"size {value!r} is larger than any pool")
        if match.group(3) and match.group(3).upper() == "B" and not unit:
            size = int(number)  # "100B": bytes
        else:
            size = int(number * SIZE_UNITS[unit])
    else:
        raise Invalid(f"invalid size {value!r}: use e.g. 512M, 10G, 1T, or a number of GiB")
    if size <= 0:
        raise Invalid(f"size must be above zero, not {value!r}")
    if size > MAX_SIZE:
        raise Invalid(f"size {value!r} is larger than any pool")
    return size
