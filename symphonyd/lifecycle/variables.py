"""Typed variables: the values a provide asks for, is given, or returns.

A variable has a name, a type with its constraints, a default, whether it is required, how a
prompt shows it (label, help, expert) and optionally `from_xpath`: the provide whose argument
or return value of the same name supplies it. It turns text (`--set VAR=VALUE`, a prompt)
or a JSON value (the API, an answers file) into a checked Python value, or raises `Invalid`
naming the variable. `validate_values` checks a whole set of values and names every invalid
field in one error.

Secrets (`Password`) are held in a `Secret`, whose repr and str never show the value; no
error message, repr or `to_json` (unless `reveal=True`, for the store to encrypt) ever does.

The base every type shares (`Variable`, `Secret`) is in `variable_base.py`; this module
has the types and re-exports the base, so a lifecycle imports everything from here. It
does no I/O and knows nothing of lifecycles, nodes, the store or the API.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Unpack
from urllib.parse import urlsplit

from symphonyd.errors import Invalid
from symphonyd.lifecycle.variable_base import (
    MASK,
    Secret,
    Variable,
    VariableOptions,
    check_variable_name,
    json_type,
    show,
)
from symphonyd.validation import check_name

__all__ = [
    "MASK",
    "Bool",
    "Float",
    "Host",
    "Int",
    "List",
    "Node",
    "Password",
    "Path",
    "Port",
    "Secret",
    "Str",
    "Url",
    "Variable",
    "VariableOptions",
    "check_variable_name",
    "dump_values",
    "parse_assignments",
    "validate_values",
]

_INT_RE = re.compile(r"^[+-]?[0-9]{1,30}$")
_FLOAT_RE = re.compile(
    r"^[+-]?([0-9]{1,300}(\.[0-9]{0,300})?|\.[0-9]{1,300})([eE][+-]?[0-9]{1,4})?$"
)
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})


def _check_range(value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, not {value}")
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}, not {value}")


class Str(Variable[str]):
    """Text, optionally matching `pattern` in full (a regular expression)."""

    kind = "str"

    def __init__(
        self,
        name: str,
        *,
        pattern: str | None = None,
        min_length: int = 0,
        max_length: int | None = None,
        **options: Unpack[VariableOptions],
    ) -> None:
        try:
            self.pattern = re.compile(pattern) if pattern is not None else None
        except re.error as exc:
            raise Invalid(f"variable {name!r}: bad pattern {pattern!r}: {exc}") from None
        self.min_length = min_length
        self.max_length = max_length
        super().__init__(name, **options)

    def _from_text(self, text: str) -> str:
        return text

    def _from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        if len(value) < self.min_length:
            raise ValueError(f"must have at least {self.min_length} characters, not {len(value)}")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"must have at most {self.max_length} characters, not {len(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(f"{show(value)} does not match the pattern {self.pattern.pattern!r}")

    def _constraints(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern.pattern if self.pattern else None,
            "min_length": self.min_length,
            "max_length": self.max_length,
        }


class Path(Str):
    """A relative path inside the lifecycle's own work directory on its node: never
    absolute, never climbing out with `..` (bodies resolve it with `context.path`, which also
    refuses a symlink that leads out)."""

    kind = "path"

    def __init__(self, name: str, **options: Unpack[VariableOptions]) -> None:
        super().__init__(name, min_length=1, max_length=4096, **options)

    def _from_text(self, text: str) -> str:
        return text.strip()

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        super()._constrain(value, members)
        if value.startswith("/"):
            raise ValueError(
                f"{show(value)} is absolute: give a path relative to the lifecycle's work directory"
            )
        if ".." in value.split("/"):
            raise ValueError(f"{show(value)} climbs out with '..'")


class Int(Variable[int]):
    """A whole number, optionally between `min` and `max` (inclusive)."""

    kind = "int"

    def __init__(
        self,
        name: str,
        *,
        min: int | None = None,
        max: int | None = None,
        **options: Unpack[VariableOptions],
    ) -> None:
        if min is not None and max is not None and min > max:
            raise Invalid(f"variable {name!r}: min {min} is above max {max}")
        self.min = min
        self.max = max
        super().__init__(name, **options)

    def _from_text(self, text: str) -> int:
        stripped = text.strip()
        if not (stripped.isascii() and _INT_RE.match(stripped)):
            raise ValueError(f"must be a whole number, not {show(text)}")
        return int(stripped)

    def _from_json(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {json_type(value)}")
        return value

    def _constrain(self, value: int, members: Collection[str] | None) -> None:
        _check_range(value, self.min, self.max)

    def _constraints(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}


class Port(Int):
    """A TCP or UDP port: 1-65535, or a narrower range."""

    kind = "port"

    def __init__(
        self,
        name: str,
        *,
        min: int = 1,
        max: int = 65535,
        **options: Unpack[VariableOptions],
    ) -> None:
        if not 1 <= min <= max <= 65535:
            raise Invalid(f"variable {name!r}: a port range must lie within 1-65535")
        super().__init__(name, min=min, max=max, **options)


class Float(Variable[float]):
    """A finite number, optionally between `min` and `max` (inclusive)."""

    kind = "float"

    def __init__(
        self,
        name: str,
        *,
        min: float | None = None,
        max: float | None = None,
        **options: Unpack[VariableOptions],
    ) -> None:
        if min is not None and max is not None and min > max:
            raise Invalid(f"variable {name!r}: min {min} is above max {max}")
        self.min = min
        self.max = max
        super().__init__(name, **options)

    def _from_text(self, text: str) -> float:
        stripped = text.strip()
        if not (stripped.isascii() and _FLOAT_RE.match(stripped)):
            raise ValueError(f"must be a number, not {show(text)}")
        return self._finite(float(stripped))

    def _from_json(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {json_type(value)}")
        try:
            return self._finite(float(value))
        except OverflowError:
            raise ValueError("is too large") from None

    @staticmethod
    def _finite(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def _constrain(self, value: float, members: Collection[str] | None) -> None:
        _check_range(value, self.min, self.max)

    def _constraints(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}


class Bool(Variable[bool]):
    """true/false; as text also yes/no, y/n, on/off, 1/0 (any case)."""

    kind = "bool"

    def _from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"must be true or false (or yes/no, on/off, 1/0), not {show(text)}")

    def _from_json(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {json_type(value)}")
        return value


def host_problem(text: str) -> str | None:
    """Why `text` is neither a host name (RFC 1123) nor an IPv4/IPv6 address, or None."""
    if not text:
        return "must not be empty"
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    labels = text.split(".")
    if (
        len(text) > 253
        or not text.isascii()
        or not all(_HOST_LABEL_RE.match(label) for label in labels)
    ):
        return f"{show(text)} is not a host name or an IP address"
    if labels[-1].isdigit():
        return f"{show(text)} is not a valid IP address"
    return None


class Host(Variable[str]):
    """A host name (RFC 1123) or an IPv4 or IPv6 address."""

    kind = "host"

    def _from_text(self, text: str) -> str:
        return text.strip()

    def _from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a host name or an IP address, not {json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        problem = host_problem(value)
        if problem is not None:
            raise ValueError(problem)


class Url(Variable[str]):
    """An absolute URL with a host, whose scheme is one of `schemes`."""

    kind = "url"

    def __init__(
        self,
        name: str,
        *,
        schemes: Iterable[str] = ("http", "https"),
        **options: Unpack[VariableOptions],
    ) -> None:
        self.schemes = tuple(scheme.lower() for scheme in schemes)
        if not self.schemes:
            raise Invalid(f"variable {name!r}: give at least one URL scheme")
        super().__init__(name, **options)

    def _from_text(self, text: str) -> str:
        return text.strip()

    def _from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a URL, not {json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        if not value.isprintable() or any(char.isspace() for char in value):
            raise ValueError(
                f"{show(value)} is not a URL: it contains spaces or control characters"
            )
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"{show(value)} is not a URL") from None
        if parts.scheme.lower() not in self.schemes:
            raise ValueError(f"{show(value)} is not a URL with scheme {' or '.join(self.schemes)}")
        host = parts.hostname
        if not host:
            raise ValueError(f"{show(value)} has no host")
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"{show(value)} has a bad host: {problem}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{show(value)} has a bad port") from None
        if port == 0:
            raise ValueError(f"{show(value)} has a bad port")

    def _constraints(self) -> dict[str, Any]:
        return {"schemes": list(self.schemes)}


class Password(Variable[Secret]):
    """A secret string. Values are `Secret`s; nothing here ever prints one."""

    kind = "password"
    is_secret = True

    def __init__(
        self,
        name: str,
        *,
        min_chars: int = 8,
        max_chars: int = 4096,
        **options: Unpack[VariableOptions],
    ) -> None:
        if not 0 <= min_chars <= max_chars:
            raise Invalid(f"variable {name!r}: min_chars must be between 0 and max_chars")
        self.min_chars = min_chars
        self.max_chars = max_chars
        super().__init__(name, **options)

    def _from_text(self, text: str) -> Secret:
        return Secret(text)

    def _from_json(self, value: object) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {json_type(value)}")
        return Secret(value)

    def _constrain(self, value: Secret, members: Collection[str] | None) -> None:
        text = value.reveal()
        if len(text) < self.min_chars:
            raise ValueError(f"must have at least {self.min_chars} characters")
        if len(text) > self.max_chars:
            raise ValueError(f"must have at most {self.max_chars} characters")
        if not text.isprintable():
            raise ValueError("must not contain control characters")

    def to_json(self, value: Secret, *, reveal: bool = False) -> Any:
        return value.reveal() if reveal else MASK

    def _constraints(self) -> dict[str, Any]:
        return {"min_chars": self.min_chars, "max_chars": self.max_chars}


class Node(Variable[str]):
    """The name of a cluster member. Without `members` only the name's syntax is checked;
    the planner passes the members when it validates."""

    kind = "node"

    def _from_text(self, text: str) -> str:
        return text.strip()

    def _from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a node name, not {json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        try:
            check_name(value, what="node name")
        except Invalid as exc:
            raise ValueError(exc.message) from None
        if members is not None and value not in members:
            known = ", ".join(sorted(members)[:20]) or "none"
            raise ValueError(f"{value!r} is not a cluster member (members: {known})")


class List(Variable[list[Any]]):
    """A list of values of one inner variable type (`of`), e.g. `List("ports", Port("port"))`.
    As text: a JSON list, or items separated by commas ('' is the empty list)."""

    kind = "list"

    def __init__(
        self,
        name: str,
        of: Variable[Any],
        *,
        min_items: int = 0,
        max_items: int | None = None,
        **options: Unpack[VariableOptions],
    ) -> None:
        if not isinstance(of, Variable):
            raise Invalid(f"variable {name!r}: `of` must be a variable, e.g. Port('port')")
        if max_items is not None and not 0 <= min_items <= max_items:
            raise Invalid(f"variable {name!r}: min_items must be between 0 and max_items")
        self.of = of
        self.kind = f"list[{of.kind}]"
        self.is_secret = of.is_secret
        self.min_items = min_items
        self.max_items = max_items
        super().__init__(name, **options)

    def _from_text(self, text: str) -> list[Any]:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except ValueError:
                raise ValueError("is not a JSON list (nor items separated by commas)") from None
            return self._from_json(items)
        if not stripped:
            return []
        return self._items([item.strip() for item in stripped.split(",")])

    def _from_json(self, value: object) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list, not {json_type(value)}")
        return self._items(list(value))

    def _items(self, raw: list[object]) -> list[Any]:
        values = []
        for index, item in enumerate(raw, 1):
            try:
                values.append(self.of._value(item, None))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return values

    def _constrain(self, value: list[Any], members: Collection[str] | None) -> None:
        if len(value) < self.min_items:
            raise ValueError(f"must have at least {self.min_items} items, not {len(value)}")
        if self.max_items is not None and len(value) > self.max_items:
            raise ValueError(f"must have at most {self.max_items} items, not {len(value)}")
        if members is not None:  # items were parsed without them: check them now
            for index, item in enumerate(value, 1):
                try:
                    self.of._finish(item, members)
                except ValueError as exc:
                    raise ValueError(f"item {index}: {exc}") from None

    def to_json(self, value: list[Any], *, reveal: bool = False) -> Any:
        return [self.of.to_json(item, reveal=reveal) for item in value]

    def _constraints(self) -> dict[str, Any]:
        return {"of": self.of.describe(), "min_items": self.min_items, "max_items": self.max_items}


def validate_values(
    variables: Iterable[Variable[Any]],
    values: Mapping[str, object],
    *,
    members: Collection[str] | None = None,
    allow_unknown: bool = False,
    what: str = "values",
) -> dict[str, Any]:
    """Check `values` (text or JSON, as `Variable.parse`) against `variables`, fill defaults,
    and return every declared variable's value (None for an optional one left out). All
    problems (invalid, missing, unknown) are reported in one `Invalid`, whose message names
    each field and whose `details["fields"]` maps each name to its reason."""
    declared = list(variables)
    known = {variable.name for variable in declared}
    result: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for variable in declared:
        raw = values.get(variable.name)
        try:
            if raw is not None:
                result[variable.name] = variable._value(raw, members)
            elif variable.default is not None:
                result[variable.name] = variable._finish(variable.default, members)
            elif variable.required:
                problems[variable.name] = "required, no value given"
            else:
                result[variable.name] = None
        except ValueError as exc:
            problems[variable.name] = str(exc)
    if not allow_unknown:
        hint = ", ".join(sorted(known)) or "none"
        for key in sorted(set(values) - known):
            problems[key] = f"unknown variable (known: {hint})"
    if problems:
        listing = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        raise Invalid(f"invalid {what} ({count}): {listing}", fields=problems)
    return result


def dump_values(
    variables: Iterable[Variable[Any]], values: Mapping[str, Any], *, reveal: bool = False
) -> dict[str, Any]:
    """Checked values as plain JSON data, secrets masked unless `reveal` (the store encrypts
    the revealed secrets of the variables whose `is_secret` is true)."""
    by_name = {variable.name: variable for variable in variables}
    return {
        name: None if value is None else by_name[name].to_json(value, reveal=reveal)
        for name, value in values.items()
    }


def parse_assignments(items: Iterable[str], *, what: str = "--set") -> dict[str, str]:
    """`["port=8080", "path=/srv/www"]` -> `{"port": "8080", "path": "/srv/www"}`. The value
    is everything after the first '='. A problem names the item by position, never by its
    text, which may hold a secret."""
    result: dict[str, str] = {}
    for index, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise Invalid(f"{what} #{index}: expected VAR=VALUE")
        if any(char.isspace() or not char.isprintable() for char in key):
            raise Invalid(f"{what} #{index}: the variable name must not contain spaces")
        if key in result:
            raise Invalid(f"{what} #{index}: {key!r} is given twice")
        result[key] = value
    return result
