"""Validators shared by the API and the settings: names, sizes, durations, keys.

Each raises `Invalid` with a message a user can act on.
"""

from __future__ import annotations

import re
from datetime import timedelta

from symphonyd.errors import Invalid

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_name(name: object, *, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_duration(text: object) -> timedelta:
    """'90s', '15m', '3h', '7d' -> timedelta."""
    match = DURATION_RE.match(str(text).strip()) if isinstance(text, str | int) else None
    if not match or int(match.group(1)) == 0:
        raise Invalid(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 3h)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
