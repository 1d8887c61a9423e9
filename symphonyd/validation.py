"""Validators shared by the API and the settings: names, sizes, durations, keys.

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
