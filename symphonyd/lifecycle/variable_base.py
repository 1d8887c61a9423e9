"""The base of typed variables: what every variable type shares (`Variable`: name,
default, required, label, help, expert, `from_xpath`, validator, parsing text and JSON
into a checked value), the `Secret` that holds a password's value, and names.

The types themselves and the functions over a set of values are in `variables.py`, the
module lifecycles import. No I/O; it knows nothing of lifecycles, nodes, the store or the
API.
"""

from __future__ import annotations

import hmac
import keyword
import re
from collections.abc import Callable, Collection
from typing import Any, Generic, TypedDict, TypeVar

from symphonyd.errors import Invalid

__all__ = [
    "MASK",
    "VARIABLE_NAME_RE",
    "Secret",
    "Variable",
    "VariableOptions",
    "check_variable_name",
    "json_type",
    "secret_texts",
    "show",
]

T = TypeVar("T")

VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MASK = "********"


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


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_type(value: object) -> str:
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


def secret_texts(raw: object) -> list[str]:
    if isinstance(raw, Secret):
        return [raw.reveal()]
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list | tuple):
        return [text for item in raw for text in secret_texts(item)]
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
            if self.is_secret and any(text and text in reason for text in secret_texts(value)):
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
