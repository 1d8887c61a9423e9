"""Lifecycles declared as Python classes: states, transitions and provides, checked when
they are defined.

A `Lifecycle` subclass declares its `states` (`State` subclasses), its `transitions`
(pairs (source, destination), as classes or names) and its `initial_state`. The applied
states form a stack from the initial state up (see `paths`): entering a state runs its
`enter` provide, leaving it runs `leave`, and a provide called with `flags` makes the states
applied above its own run `cross(**flags)`.

A provide is a method decorated with `@provide(requires=..., returns=..., ...)`. It is
called with keyword arguments, one for each value its requires give (see `requires`).

Checks happen while the class statements run, so a module with a bad declaration fails to
import with the reason: bad names, a malformed require, a provide whose signature does not
take what its requires give, an unknown state in a transition, a transition to itself, an
unreachable state, a cycle (a transition that would enter a state that is still applied).
`Catalog.check` (see `catalog`) then checks what lifecycles say of each other.

The rest of the model sits beside this module, imported in one direction only:
`xpath` (names of provides) <- `requires` (what a provide needs) <- this module <-
`catalog` (the lifecycles a node knows). `ProvideRef` is defined here because
`Lifecycle.provides` returns it; `catalog` re-exports it. Every name in `__all__` stays
importable from here, and so does `_ProvideRequire` (the old name of
`requires.ProvideRequire`); new code imports a name from the module that defines it.
`Catalog` is handed out lazily (a module `__getattr__`) since `catalog` imports this
module: this module must not import `catalog` at import time.

This module only describes; it never runs a provide body and does no I/O.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, overload

from symphonyd.errors import Invalid, NotFound
from symphonyd.lifecycle.paths import find_cycle, reachable
from symphonyd.lifecycle.requires import (
    AnyRequire,
    Nargs,
    ProvideRequire,
    Require,
    RequireExternal,
    RequireLocal,
    _variable_problems,
)
from symphonyd.lifecycle.variables import Variable, validate_values
from symphonyd.lifecycle.xpath import XPath

if TYPE_CHECKING:
    from symphonyd.lifecycle.catalog import Catalog
    from symphonyd.lifecycle.context import NodeContext

__all__ = [
    "AnyRequire",
    "Catalog",
    "Lifecycle",
    "Nargs",
    "Provide",
    "ProvideRef",
    "Require",
    "RequireExternal",
    "RequireLocal",
    "State",
    "XPath",
    "provide",
]

CLASS_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,62}$")
PROVIDE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# not provides: State's own methods and attributes
RESERVED = frozenset(
    {"leave", "cross", "ensure", "context", "provides", "get_provide", "name", "label", "help"}
)


# -- provides ----------------------------------------------------------------------------


class Provide:
    """A method of a state that the lifecycle offers, with what it requires and returns.
    The executor runs `func(state_instance, **arguments)`."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        requires: Iterable[AnyRequire] = (),
        returns: Iterable[Variable[Any]] = (),
        flags: Mapping[str, object] | None = None,
        label: str | None = None,
        help: str | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        self.func = func
        self.name: str = getattr(func, "__name__", "provide")
        self.requires: tuple[AnyRequire, ...] = tuple(requires)
        self.returns: tuple[Variable[Any], ...] = tuple(returns)
        self.flags: dict[str, object] = dict(flags or {})
        self._label = label
        self.help = help if help is not None else (inspect.getdoc(func) or "")
        self.tags: tuple[str, ...] = tuple(tags)

    @property
    def label(self) -> str:
        return self._label if self._label is not None else self.name.replace("_", " ")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def arguments(self) -> dict[str, Any]:
        """Keyword argument name -> the variable (or multiple require) that gives it."""
        result: dict[str, Any] = {}
        for require in self.requires:
            if isinstance(require, Require | ProvideRequire):
                result.update(require.arguments())
        return result

    def user_variables(self) -> list[Variable[Any]]:
        """The variables of its `Require`s: what a `RequireLocal`'s provide_args may set."""
        return [v for r in self.requires if isinstance(r, Require) for v in r.variables]

    def check_returns(self, values: object) -> dict[str, Any]:
        """What the body returned, checked against `returns` (all problems at once)."""
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise Invalid(f"provide {self.name!r} returned {type(values).__name__}, not a dict")
        return validate_values(self.returns, values, what=f"return values of {self.name!r}")

    def problems(self) -> list[str]:
        problems = []
        if not PROVIDE_NAME_RE.match(self.name) or self.name in RESERVED:
            problems.append(
                "a provide name is lowercase letters, digits and '_', and not one of "
                + ", ".join(sorted(RESERVED))
            )
        seen: dict[str, str] = {}
        for index, require in enumerate(self.requires, 1):
            if not isinstance(require, Require | RequireLocal | RequireExternal):
                problems.append(
                    f"requires #{index} is {type(require).__name__}: "
                    "use Require, RequireLocal or RequireExternal"
                )
                continue
            problems += require.problems()
            if require.name in {r.name for r in self.requires[: index - 1]}:
                problems.append(f"two requires named {require.name!r}: give one a name=")
            for argument in require.arguments():
                if argument in seen:
                    problems.append(
                        f"argument {argument!r} is given by both require {seen[argument]!r} "
                        f"and require {require.name!r}"
                    )
                seen[argument] = require.name
        problems += _variable_problems(self.returns, "returns")
        for flag, value in self.flags.items():
            if not (isinstance(flag, str) and flag.isidentifier()):
                problems.append(f"flag {flag!r} is not an identifier")
            if not isinstance(value, str | int | float | bool):
                problems.append(f"flag {flag!r}: a value is a string, number or boolean")
        if not all(isinstance(tag, str) and tag for tag in self.tags):
            problems.append("tags are non-empty strings")
        problems += signature_problems(self.func, list(seen), "it")
        return problems

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "help": self.help,
            "tags": list(self.tags),
            "flags": dict(self.flags),
            "requires": [require.describe() for require in self.requires],
            "returns": [variable.describe() for variable in self.returns],
        }

    def __repr__(self) -> str:
        return f"Provide({self.name!r})"


def _parameters(func: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """The parameters after `self`, or None if they are not all keywords (or unreadable)."""
    try:
        parameters = list(inspect.signature(func).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL or p.kind is p.POSITIONAL_ONLY for p in parameters):
        return None
    return parameters


def unaccepted(func: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """The names `func(self, **{name: ...})` would refuse."""
    parameters = _parameters(func)
    if parameters is None:
        return list(names)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return []
    return [name for name in names if name not in {p.name for p in parameters}]


def signature_problems(func: Callable[..., Any], names: Sequence[str], what: str) -> list[str]:
    """Whether `func(self, **{name: ...})` can be called with exactly `names`."""
    parameters = _parameters(func)
    if parameters is None:
        return [f"{what} must take only keyword arguments (besides self)"]
    problems = []
    missing = [
        p.name
        for p in parameters
        if p.kind is not p.VAR_KEYWORD and p.name not in names and p.default is p.empty
    ]
    if missing:
        problems.append(f"{what} takes {missing} but no require gives them")
    extra = unaccepted(func, names)
    if extra:
        problems.append(f"{what} is given {extra} by its requires but does not take them")
    return problems


@overload
def provide(func: Callable[..., Any], /) -> Provide: ...
@overload
def provide(
    *,
    requires: Iterable[AnyRequire] = (),
    returns: Iterable[Variable[Any]] = (),
    flags: Mapping[str, object] | None = None,
    label: str | None = None,
    help: str | None = None,
    tags: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Provide]: ...
def provide(
    func: Callable[..., Any] | None = None,
    /,
    *,
    requires: Iterable[AnyRequire] = (),
    returns: Iterable[Variable[Any]] = (),
    flags: Mapping[str, object] | None = None,
    label: str | None = None,
    help: str | None = None,
    tags: Iterable[str] = (),
) -> Provide | Callable[[Callable[..., Any]], Provide]:
    """Mark a state's method as a provide: `@provide` or `@provide(requires=[...], ...)`."""

    def wrap(f: Callable[..., Any]) -> Provide:
        return Provide(
            f, requires=requires, returns=returns, flags=flags, label=label, help=help, tags=tags
        )

    return wrap(func) if func is not None else wrap


# -- states ------------------------------------------------------------------------------


def _enter_nothing(self: State) -> None:
    """Entering this state needs nothing and does nothing."""


class State:
    """A state of a lifecycle. `enter` (a provide, implicitly one that requires nothing) runs
    when the state is entered, `leave()` when it is left, `cross(**flags)` when a provide
    with flags of a state below it is called. Provides are checked when the class is made."""

    name: ClassVar[str] = "State"
    label: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    _provides: ClassVar[dict[str, Provide]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__
        entry = cls.__dict__.get("enter")
        if entry is not None and not isinstance(entry, Provide):
            if not callable(entry):
                raise Invalid(f"state {cls.__qualname__} is invalid: enter must be a method")
            wrapped = Provide(entry)
            wrapped.name = "enter"
            setattr(cls, "enter", wrapped)  # noqa: B010 (State declares no enter to override)
        provides: dict[str, Provide] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, Provide):
                    provides[attr] = value
                elif attr in provides:
                    del provides[attr]
        if "enter" not in provides:
            implicit = Provide(_enter_nothing)
            implicit.name = "enter"
            setattr(cls, "enter", implicit)  # noqa: B010
            provides["enter"] = implicit
        cls._provides = {"enter": provides.pop("enter"), **provides}
        problems = []
        if not CLASS_NAME_RE.match(cls.__name__):
            problems.append("a state name is CamelCase letters and digits")
        for name, item in cls._provides.items():
            problems += [f"provide {name}: {problem}" for problem in item.problems()]
        problems += signature_problems(cls.leave, [], "leave")
        problems += signature_problems(cls.ensure, [], "ensure")
        if _parameters(cls.cross) is None:
            problems.append("cross must take only keyword arguments (the flags)")
        if problems:
            raise Invalid(f"state {cls.__qualname__} is invalid: " + "; ".join(problems))

    @classmethod
    def provides(cls) -> dict[str, Provide]:
        """Name -> provide, `enter` first, then in declaration order."""
        return dict(cls._provides)

    @classmethod
    def get_provide(cls, name: str) -> Provide:
        try:
            return cls._provides[name]
        except KeyError:
            known = ", ".join(cls._provides)
            raise NotFound(
                f"state {cls.name} has no provide {name!r} (provides: {known})"
            ) from None

    context: NodeContext  # set by the executor on each instance before a body runs

    def leave(self) -> None:
        """Undo what entering did; nothing by default."""

    def ensure(self) -> None:
        """Make true again what being in this state promises (a server runs) after the
        node restarts; called on every applied state, bottom up. Nothing by default."""

    def cross(self, **flags: object) -> None:
        """React to a provide with flags called on a state below; nothing by default."""


# -- lifecycles --------------------------------------------------------------------------

StateSpec: TypeAlias = type[State] | str


class Lifecycle:
    """A state machine: subclass it and set `states`, `transitions` and `initial_state`.
    Pass `abstract=True` in the class statement for a base that declares nothing."""

    name: ClassVar[str] = "Lifecycle"
    label: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    states: ClassVar[Sequence[type[State]]] = ()
    transitions: ClassVar[Sequence[tuple[StateSpec, StateSpec]]] = ()
    initial_state: ClassVar[StateSpec | None] = None

    _by_name: ClassVar[dict[str, type[State]]] = {}
    _edges: ClassVar[dict[str, tuple[str, ...]]] = {}
    _initial: ClassVar[str] = ""

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__
        if abstract:
            cls._by_name, cls._edges, cls._initial = {}, {}, ""
            return
        problems = cls._declaration_problems()
        if problems:
            raise Invalid(
                f"lifecycle {cls.__qualname__} is invalid: " + "; ".join(problems),
                problems=problems,
            )

    @classmethod
    def _declaration_problems(cls) -> list[str]:
        problems: list[str] = []
        if not CLASS_NAME_RE.match(cls.__name__):
            problems.append("a lifecycle name is CamelCase letters and digits")
        by_name: dict[str, type[State]] = {}
        for state in cls.states:
            if not (isinstance(state, type) and issubclass(state, State)):
                problems.append(f"states: {state!r} is not a State subclass")
            elif state.name in by_name:
                problems.append(f"states: two states named {state.name}")
            else:
                by_name[state.name] = state
        if not by_name:
            return [*problems, "declare at least one state in `states`"]
        for attr, value in vars(cls).items():
            if isinstance(value, type) and issubclass(value, State) and value not in cls.states:
                problems.append(f"state class {attr} is defined here but not listed in states")
        known = ", ".join(by_name)

        def resolve(spec: object, where: str) -> str | None:
            if isinstance(spec, str) and spec in by_name:
                return spec
            if (
                isinstance(spec, type)
                and issubclass(spec, State)
                and by_name.get(spec.name) is spec
            ):
                return spec.name
            problems.append(f"{where}: unknown state {_state_label(spec)} (states: {known})")
            return None

        initial = None
        if cls.initial_state is None:
            problems.append("no initial_state")
        else:
            initial = resolve(cls.initial_state, "initial_state")
        edges: dict[str, list[str]] = {name: [] for name in by_name}
        for index, pair in enumerate(cls.transitions, 1):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                problems.append(f"transition #{index} is not a pair (source, destination)")
                continue
            source = resolve(pair[0], f"transition #{index}")
            target = resolve(pair[1], f"transition #{index}")
            if source is None or target is None:
                continue
            if source == target:
                problems.append(f"transition {source} -> {target} goes to itself")
            elif target in edges[source]:
                problems.append(f"transition {source} -> {target} is declared twice")
            else:
                edges[source].append(target)
        if initial is not None:
            if by_name[initial].get_provide("enter").requires:
                problems.append(
                    f"the initial state {initial} is applied from the start: "
                    "its enter cannot require anything"
                )
            unreachable = [name for name in by_name if name not in reachable(edges, initial)]
            if unreachable:
                problems.append(
                    f"states {unreachable} cannot be reached from the initial state {initial}"
                )
        cycle = find_cycle(edges)
        if cycle is not None:
            problems.append(
                "the transitions form a cycle "
                + " -> ".join(cycle)
                + ": its last transition would enter a state that is still applied"
            )
        flags = sorted(
            {
                flag
                for state in by_name.values()
                for p in state.provides().values()
                for flag in p.flags
            }
        )
        for state in by_name.values():
            refused = unaccepted(state.cross, flags)
            if refused:
                problems.append(f"state {state.name}: cross does not take the flags {refused}")
        if not problems and initial is not None:
            cls._by_name = by_name
            cls._edges = {name: tuple(targets) for name, targets in edges.items()}
            cls._initial = initial
        return problems

    @classmethod
    def state_names(cls) -> list[str]:
        return list(cls._by_name)

    @classmethod
    def get_state(cls, name: str) -> type[State]:
        try:
            return cls._by_name[name]
        except KeyError:
            known = ", ".join(cls._by_name)
            raise NotFound(
                f"lifecycle {cls.name} has no state {name!r} (states: {known})"
            ) from None

    @classmethod
    def initial(cls) -> str:
        return cls._initial

    @classmethod
    def edges(cls) -> dict[str, tuple[str, ...]]:
        """State name -> the states a transition leads to from it."""
        return dict(cls._edges)

    @classmethod
    def provides(cls) -> list[ProvideRef]:
        return [
            ProvideRef(cls, state, item)
            for state in cls._by_name.values()
            for item in state.provides().values()
        ]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "label": cls.label or cls.name,
            "help": cls.help or inspect.getdoc(cls) or "",
            "initial_state": cls._initial,
            "states": [
                {
                    "name": state.name,
                    "label": state.label or state.name,
                    "help": state.help or inspect.getdoc(state) or "",
                    "provides": [item.describe() for item in state.provides().values()],
                }
                for state in cls._by_name.values()
            ],
            "transitions": [[s, t] for s, targets in cls._edges.items() for t in targets],
        }

    @classmethod
    def to_dot(cls) -> str:
        """The transition graph in Graphviz DOT, the initial state drawn doubled."""
        lines = [f'digraph "{cls.name}" {{']
        for name in cls._by_name:
            shape = "doublecircle" if name == cls._initial else "circle"
            lines.append(f'  "{name}" [shape={shape}];')
        lines += [f'  "{s}" -> "{t}";' for s, targets in cls._edges.items() for t in targets]
        return "\n".join([*lines, "}"]) + "\n"


def _state_label(spec: object) -> str:
    if isinstance(spec, type):
        return spec.__qualname__
    return repr(spec)


@dataclass(frozen=True)
class ProvideRef:
    """Where a provide lives: its lifecycle and state."""

    lifecycle: type[Lifecycle]
    state: type[State]
    provide: Provide

    @property
    def xpath(self) -> str:
        return f"{self.lifecycle.name}/{self.state.name}/{self.provide.name}"

    def __str__(self) -> str:
        return self.xpath


# -- names defined elsewhere, still exported from here -----------------------------------

_ProvideRequire = ProvideRequire  # its old name: executor.py imports it from here

if not TYPE_CHECKING:  # mypy reads the import of Catalog under TYPE_CHECKING above

    def __getattr__(name: str) -> object:
        """`Catalog`, imported on first use: `catalog` imports this module (PEP 562)."""
        if name == "Catalog":
            from symphonyd.lifecycle.catalog import Catalog

            return Catalog
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
