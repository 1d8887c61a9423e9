"""Typed variables: the values a provide asks for, is given, or returns.

A variable has a name, a type with its constraints, a default, whether it is required, how a
prompt shows it (label, help, expert) and optionally `from_xpath`: the provide whose argument
or return value of the same name supplies it. It turns text (`--set VAR=VALUE`, a prompt)
or a JSON value (the API, an answers file) into a checked Python value, or raises `Invalid`
naming the variable. `validate_values` checks a whole set of values and names every invalid
field in one error.

Secrets (`Password`) are held in a `Secret`, whose repr and str never show the value; no
error message, repr or `to_json` (unless `reveal=True`, for the store to encrypt) ever does.

This module does no I/O and knows nothing of lifecycles, nodes, the store or the API.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import keyword
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

from symphonyd.errors import Invalid
from symphonyd.validation import check_name

__all__ = [
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

T = TypeVar("T")

VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MASK = "********"
_INT_RE = re.compile(r"^[+-]?[0-9]{1,30}$")
_FLOAT_RE = re.compile(
    r"^[+-]?([0-9]{1,300}(\.[0-9]{0,300})?|\.[0-9]{1,300})([eE][+-]?[0-9]{1,4})?$"
)
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})


def check_variable_name(name: object) -> str:
    """A variable name is also a keyword argument of a provide: a Python identifier."""
    if (
        not isinstance(name, str)
        or not VARIABLE_NAME_RE.match(name)
        or keyword.iskeyword(name)
        or name == "self"
    ):
        raise Invalid(
            f"invalid variable name {name!r}: use 1-63 letters, digits and '_', "
            "not starting with a digit, and not a Python keyword"
        )
    return name


class Secret:
    """A secret string: `reveal()` gives it; repr, str and format only ever show a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled: encrypt reveal() explicitly")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _secret_texts(raw: object) -> list[str]:
    if isinstance(raw, Secret):
        return [raw.reveal()]
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list | tuple):
        return [text for item in raw for text in _secret_texts(item)]
    return []


class VariableOptions(TypedDict, total=False):
    """What every variable takes besides its name and its own constraints."""

    default: object
    required: bool
    label: str | None
    help: str
    expert: bool
    validator: Callable[[Any], object] | None
    from_xpath: str | None


class Variable(Generic[T]):
    """Base of the typed variables. Subclasses convert (`_from_text`, `_from_json`) and
    constrain (`_constrain`), raising `ValueError(reason)`; `validate` is the hook for
    further checks (override it, or pass `validator=`, a callable that raises ValueError or
    Invalid, or returns False, to reject a value)."""

    kind: str = "variable"
    is_secret: bool = False

    def __init__(
        self,
        name: str,
        *,
        default: object = None,
        required: bool = True,
        label: str | None = None,
        help: str = "",
        expert: bool = False,
        validator: Callable[[Any], object] | None = None,
        from_xpath: str | None = None,
    ) -> None:
        self.name = check_variable_name(name)
        self.required = required
        self.label = label if label is not None else name.replace("_", " ")
        self.help = help
        self.expert = expert
        self.validator = validator
        if from_xpath is not None and (not isinstance(from_xpath, str) or not from_xpath):
            raise Invalid(f"variable {name!r}: from_xpath must be a non-empty xpath string")
        self.from_xpath = from_xpath
        self.default: T | None = None
        if default is not None:
            try:
                self.default = self._value(default, None)
            except ValueError as exc:
                raise Invalid(f"bad default for variable {name!r}: {exc}") from None

    # -- the three ways in -----------------------------------------------------------------

    def parse(self, value: object, *, members: Collection[str] | None = None) -> T:
        """A string is read as text (as from `--set`); any other value as JSON. `members`
        are the cluster's node names, for `Node` variables (None: check the syntax only)."""
        return self._wrap(lambda: self._value(value, members))

    def from_text(self, text: str, *, members: Collection[str] | None = None) -> T:
        return self._wrap(lambda: self._finish(self._from_text(text), members))

    def from_json(self, value: object, *, members: Collection[str] | None = None) -> T:
        return self._wrap(lambda: self._finish(self._from_json(value), members))

    # -- the hook --------------------------------------------------------------------------

    def validate(self, value: T) -> None:
        """Further checks once the value has its type and constraints: raise ValueError (or
        Invalid) with the reason. Calls the `validator` given to the constructor."""
        if self.validator is not None and self.validator(value) is False:
            raise ValueError("rejected by its validation hook")

    # -- out -------------------------------------------------------------------------------

    def to_json(self, value: T, *, reveal: bool = False) -> Any:
        """The value as plain JSON data; secrets are masked unless `reveal`."""
        return value

    def describe(self) -> dict[str, Any]:
        """Plain data for the API and the prompts (a secret default is masked)."""
        return {
            "name": self.name,
            "type": self.kind,
            "required": self.required,
            "default": None if self.default is None else self.to_json(self.default),
            "label": self.label,
            "help": self.help,
            "expert": self.expert,
            "secret": self.is_secret,
            "from_xpath": self.from_xpath,
            **self._constraints(),
        }

    def __repr__(self) -> str:
        default = "" if self.default is None else f", default={self.to_json(self.default)!r}"
        return f"{type(self).__name__}({self.name!r}{default}, required={self.required})"

    # -- for subclasses --------------------------------------------------------------------

    def _from_text(self, text: str) -> T:
        raise NotImplementedError

    def _from_json(self, value: object) -> T:
        raise NotImplementedError

    def _constrain(self, value: T, members: Collection[str] | None) -> None:
        """Raise ValueError(reason) if `value` breaks the declared constraints."""

    def _constraints(self) -> dict[str, Any]:
        return {}

    # -- internals -------------------------------------------------------------------------

    def _finish(self, value: T, members: Collection[str] | None) -> T:
        self._constrain(value, members)
        try:
            self.validate(value)
        except (ValueError, Invalid) as exc:
            reason = exc.message if isinstance(exc, Invalid) else str(exc)
            # our own reasons never quote a secret; a hook's might
            if self.is_secret and any(text and text in reason for text in _secret_texts(value)):
                reason = "rejected by its validation hook (the reason would show the secret)"
            raise ValueError(reason) from None
        return value

    def _value(self, raw: object, members: Collection[str] | None) -> T:
        if isinstance(raw, str):
            return self._finish(self._from_text(raw), members)
        return self._finish(self._from_json(raw), members)

    def _wrap(self, convert: Callable[[], T]) -> T:
        try:
            return convert()
        except ValueError as exc:
            reason = str(exc)
        raise Invalid(f"invalid value for {self.name!r}: {reason}", fields={self.name: reason})


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
            raise ValueError(f"must be a string, not {_json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        if len(value) < self.min_length:
            raise ValueError(f"must have at least {self.min_length} characters, not {len(value)}")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"must have at most {self.max_length} characters, not {len(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(f"{_show(value)} does not match the pattern {self.pattern.pattern!r}")

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
                f"{_show(value)} is absolute: give a path relative to the lifecycle's work "
                "directory"
            )
        if ".." in value.split("/"):
            raise ValueError(f"{_show(value)} climbs out with '..'")


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
            raise ValueError(f"must be a whole number, not {_show(text)}")
        return int(stripped)

    def _from_json(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {_json_type(value)}")
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
            raise ValueError(f"must be a number, not {_show(text)}")
        return self._finite(float(stripped))

    def _from_json(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {_json_type(value)}")
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
        raise ValueError(f"must be true or false (or yes/no, on/off, 1/0), not {_show(text)}")

    def _from_json(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_json_type(value)}")
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
        return f"{_show(text)} is not a host name or an IP address"
    if labels[-1].isdigit():
        return f"{_show(text)} is not a valid IP address"
    return None


class Host(Variable[str]):
    """A host name (RFC 1123) or an IPv4 or IPv6 address."""

    kind = "host"

    def _from_text(self, text: str) -> str:
        return text.strip()

    def _from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a host name or an IP address, not {_json_type(value)}")
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
            raise ValueError(f"must be a URL, not {_json_type(value)}")
        return value

    def _constrain(self, value: str, members: Collection[str] | None) -> None:
        if not value.isprintable() or any(char.isspace() for char in value):
            raise ValueError(
                f"{_show(value)} is not a URL: it contains spaces or control characters"
            )
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"{_show(value)} is not a URL") from None
        if parts.scheme.lower() not in self.schemes:
            raise ValueError(f"{_show(value)} is not a URL with scheme {' or '.join(self.schemes)}")
        host = parts.hostname
        if not host:
            raise ValueError(f"{_show(value)} has no host")
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"{_show(value)} has a bad host: {problem}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{_show(value)} has a bad port") from None
        if port == 0:
            raise ValueError(f"{_show(value)} has a bad port")

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
            raise ValueError(f"must be a string, not {_json_type(value)}")
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
            raise ValueError(f"must be a node name, not {_json_type(value)}")
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
            raise ValueError(f"must be a list, not {_json_type(value)}")
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
