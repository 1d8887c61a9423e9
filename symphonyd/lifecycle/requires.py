"""Requires: what a provide needs before it can be called, and what it is given.

- `Require`: values from the user (or their defaults);
- `RequireLocal`: a provide of another lifecycle called on the same node;
- `RequireExternal`: a provide called on other nodes, `nargs` of them (a count, '?' or '*').

A provide is called with keyword arguments: each variable of its `Require`s, each
`provide_args` and `provide_ret` variable of a `RequireLocal` or a single `RequireExternal`;
a `RequireExternal` with `nargs` other than 1 gives one argument, named after the require,
holding a list of such dicts (one per node).

A require checks itself (`problems`: its names, its xpath, its nargs, its variables) but
not what it points at: whether the xpath selects one provide and whether provide_args and
provide_ret fit that provide is `Catalog.check`'s job. This module must not import the
lifecycle model or the catalog (`model` imports it, not the reverse), never resolves an
xpath against lifecycles, and only describes: it calls nothing and does no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias

from symphonyd.errors import Invalid
from symphonyd.lifecycle.variables import Variable, check_variable_name, validate_values
from symphonyd.lifecycle.xpath import XPath

__all__ = [
    "MAX_NARGS",
    "AnyRequire",
    "Nargs",
    "ProvideRequire",
    "Require",
    "RequireExternal",
    "RequireLocal",
]

MAX_NARGS = 1000

Nargs: TypeAlias = int | Literal["?", "*"]


def _variable_problems(variables: Sequence[object], what: str) -> list[str]:
    problems = []
    seen: set[str] = set()
    for index, variable in enumerate(variables, 1):
        if not isinstance(variable, Variable):
            problems.append(f"{what} #{index} is {type(variable).__name__}, not a variable")
            continue
        if variable.name in seen:
            problems.append(f"{what}: two variables named {variable.name!r}")
        seen.add(variable.name)
        if variable.from_xpath is not None:
            try:
                XPath.parse(variable.from_xpath)
            except Invalid as exc:
                problems.append(f"variable {variable.name!r}: from_xpath: {exc.message}")
    return problems


class Require:
    """Values from the user (or their defaults); the provide receives each variable as a
    keyword argument of the same name."""

    def __init__(
        self,
        variables: Iterable[Variable[Any]],
        *,
        name: str = "values",
        label: str | None = None,
        help: str = "",
    ) -> None:
        self.variables: tuple[Variable[Any], ...] = tuple(variables)
        self.name = name
        self.label = label if label is not None else name.replace("_", " ")
        self.help = help

    def problems(self) -> list[str]:
        problems = _name_problems(self.name, "require name")
        return problems + _variable_problems(self.variables, f"require {self.name!r}")

    def arguments(self) -> dict[str, Variable[Any]]:
        return {variable.name: variable for variable in self.variables}

    def validate(
        self, values: Mapping[str, object], *, members: Collection[str] | None = None
    ) -> dict[str, Any]:
        """`validate_values` over this require's variables."""
        what = f"values of {self.name!r}"
        return validate_values(self.variables, values, members=members, what=what)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "user",
            "name": self.name,
            "label": self.label,
            "help": self.help,
            "variables": [variable.describe() for variable in self.variables],
        }

    def __repr__(self) -> str:
        return f"Require({list(self.variables)!r}, name={self.name!r})"


class ProvideRequire:
    """A provide another node (or this one) must have been called with `provide_args`;
    its `provide_ret` values come back to the requirer. The base of `RequireLocal` and
    `RequireExternal` (`model` still exports it as `_ProvideRequire`, its old name)."""

    local: ClassVar[bool]

    def __init__(
        self,
        xpath: str,
        provide_args: Iterable[Variable[Any]] = (),
        provide_ret: Iterable[Variable[Any]] = (),
        *,
        nargs: Nargs = 1,
        name: str | None = None,
        label: str | None = None,
        help: str = "",
    ) -> None:
        self.xpath_text = xpath
        self.xpath: XPath | None
        self.xpath_problem: str | None = None
        try:
            self.xpath = XPath.parse(xpath)
        except Invalid as exc:
            self.xpath, self.xpath_problem = None, exc.message
        self.provide_args: tuple[Variable[Any], ...] = tuple(provide_args)
        self.provide_ret: tuple[Variable[Any], ...] = tuple(provide_ret)
        self.nargs = nargs
        default_name = self.xpath.last if self.xpath and self.xpath.last != "*" else "provide"
        self.name = name if name is not None else default_name
        self.label = label if label is not None else self.name.replace("_", " ")
        self.help = help

    def problems(self) -> list[str]:
        what = f"require {self.name!r}"
        problems = _name_problems(self.name, "require name")
        if self.xpath_problem is not None:
            problems.append(f"{what}: {self.xpath_problem}")
        elif self.local and self.xpath is not None and self.xpath.node is not None:
            problems.append(f"{what}: a local require cannot name a node ({self.xpath_text!r})")
        nargs = self.nargs
        if not (
            nargs in ("?", "*")
            or (isinstance(nargs, int) and not isinstance(nargs, bool) and 1 <= nargs <= MAX_NARGS)
        ):
            problems.append(
                f"{what}: nargs must be a count 1-{MAX_NARGS}, '?' or '*', not {nargs!r}"
            )
        problems += _variable_problems(self.provide_args, f"{what} provide_args")
        problems += _variable_problems(self.provide_ret, f"{what} provide_ret")
        both = {v.name for v in self.provide_args if isinstance(v, Variable)} & {
            v.name for v in self.provide_ret if isinstance(v, Variable)
        }
        if both:
            problems.append(f"{what}: {sorted(both)} in both provide_args and provide_ret")
        return problems

    @property
    def multiple(self) -> bool:
        return self.nargs != 1

    def nargs_range(self) -> tuple[int, int | None]:
        """The least and the most providers: (1, 1), (n, n), (0, 1) for '?', (0, None) for '*'."""
        if self.nargs == "?":
            return (0, 1)
        if self.nargs == "*":
            return (0, None)
        return (int(self.nargs), int(self.nargs))

    def arguments(self) -> dict[str, Any]:
        if self.multiple:
            return {self.name: self}
        return {variable.name: variable for variable in (*self.provide_args, *self.provide_ret)}

    def describe(self) -> dict[str, Any]:
        return {
            "type": "local" if self.local else "external",
            "name": self.name,
            "xpath": self.xpath_text,
            "nargs": self.nargs,
            "label": self.label,
            "help": self.help,
            "provide_args": [variable.describe() for variable in self.provide_args],
            "provide_ret": [variable.describe() for variable in self.provide_ret],
        }

    def __repr__(self) -> str:
        nargs = f", nargs={self.nargs!r}" if self.nargs != 1 else ""
        return f"{type(self).__name__}({self.xpath_text!r}, name={self.name!r}{nargs})"


class RequireLocal(ProvideRequire):
    """A provide of another lifecycle that must have been called on the same node."""

    local = True

    def __init__(
        self,
        xpath: str,
        provide_args: Iterable[Variable[Any]] = (),
        provide_ret: Iterable[Variable[Any]] = (),
        *,
        name: str | None = None,
        label: str | None = None,
        help: str = "",
    ) -> None:
        super().__init__(xpath, provide_args, provide_ret, name=name, label=label, help=help)


class RequireExternal(ProvideRequire):
    """A provide that must have been called on other nodes: exactly `nargs` of them, or
    '?' (none or one) or '*' (any number)."""

    local = False


AnyRequire: TypeAlias = Require | RequireLocal | RequireExternal


def _name_problems(name: object, what: str) -> list[str]:
    try:
        check_variable_name(name)
    except Invalid:
        return [f"{what} {name!r} is not an identifier"]
    return []
