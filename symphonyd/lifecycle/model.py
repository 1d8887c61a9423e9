"""Lifecycles declared as Python classes, checked when they are defined, and found by xpath.

A `Lifecycle` subclass declares its `states` (`State` subclasses), its `transitions`
(pairs (source, destination), as classes or names) and its `initial_state`. The applied
states form a stack from the initial state up (see `paths`): entering a state runs its
`enter` provide, leaving it runs `leave`, and a provide called with `flags` makes the states
applied above its own run `cross(**flags)`.

A provide is a method decorated with `@provide(requires=..., returns=..., ...)`. It is
called with keyword arguments: each variable of its `Require`s, each `provide_args` and
`provide_ret` variable of a `RequireLocal` or a single `RequireExternal`; a
`RequireExternal` with `nargs` other than 1 gives one argument, named after the require,
holding a list of such dicts (one per node).

Checks happen while the class statements run, so a module with a bad declaration fails to
import with the reason: bad names, a malformed require, a provide whose signature does not
take what its requires give, an unknown state in a transition, a transition to itself, an
unreachable state, a cycle (a transition that would enter a state that is still applied).
`Catalog.check` then checks what lifecycles say of each other (xpaths, provide_args and
provide_ret against the target, from_xpath, cycles of requires).

An xpath names provides: `[/<node> | //] <Lifecycle>/<State>/<provide>` where `/` is one
level, `//` any number of levels and `*` any name; `WebSite//start`,
`//WebSite//start` (any node), `WebServer/Active/start`, `/node-1/WebSite//start`, `//start`.

This module only describes; it never runs a provide body and does no I/O.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, overload

from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.lifecycle.paths import find_cycle, reachable, shortest_forward
from symphonyd.lifecycle.variables import Variable, check_variable_name, validate_values
from symphonyd.validation import check_name

if TYPE_CHECKING:
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
_STEP_RE = re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]{0,62})$")
# not provides: State's own methods and attributes
RESERVED = frozenset(
    {"leave", "cross", "ensure", "context", "provides", "get_provide", "name", "label", "help"}
)
MAX_NARGS = 1000

Nargs: TypeAlias = int | Literal["?", "*"]


# -- xpaths ------------------------------------------------------------------------------


@dataclass(frozen=True)
class XPath:
    """A parsed xpath. `node` is set by `/<node>/...`; each step is (any_depth, name)."""

    text: str
    node: str | None
    steps: tuple[tuple[bool, str], ...]

    @classmethod
    def parse(cls, text: object) -> XPath:
        def bad(reason: str) -> Invalid:
            return Invalid(f"bad xpath {text!r}: {reason}")

        if not isinstance(text, str) or not text:
            raise Invalid(f"bad xpath {text!r}: give e.g. WebSite//start or WebServer/Active/start")
        if any(char.isspace() or not char.isprintable() for char in text):
            raise bad("it contains spaces or control characters")
        node: str | None = None
        rest = text
        any_depth = False
        if rest.startswith("//"):
            any_depth, rest = True, rest[2:]
        elif rest.startswith("/"):
            node, sep, rest = rest[1:].partition("/")
            try:
                check_name(node, what="node name")
            except Invalid as exc:
                raise bad(exc.message) from None
            if not sep:
                raise bad("it names a node but no provide")
            if rest.startswith("/"):
                any_depth, rest = True, rest[1:]
        steps: list[tuple[bool, str]] = []
        for part in rest.split("/"):
            if not part:
                if any_depth:
                    raise bad("'///' or a '/' at the end")
                any_depth = True
                continue
            if not _STEP_RE.match(part):
                raise bad(f"{part!r} is not a name or '*'")
            steps.append((any_depth, part))
            any_depth = False
        if any_depth:
            raise bad("it ends with '/'")
        if len(steps) > 3:
            raise bad("more than 3 names: use <Lifecycle>/<State>/<provide>")
        return cls(text, node, tuple(steps))

    def matches(self, lifecycle: str, state: str, provide: str) -> bool:
        """Whether the provide at <lifecycle>/<state>/<provide> is selected (any node)."""
        path = (lifecycle, state, provide)
        steps = self.steps

        def match(step: int, level: int) -> bool:
            if step == len(steps):
                return level == len(path)
            any_depth, name = steps[step]
            levels = range(level, len(path)) if any_depth else range(level, min(level + 1, 3))
            return any(
                (name == "*" or name == path[at]) and match(step + 1, at + 1) for at in levels
            )

        return match(0, 0)

    @property
    def last(self) -> str:
        return self.steps[-1][1]

    def __str__(self) -> str:
        return self.text


# -- requires ----------------------------------------------------------------------------


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


class _ProvideRequire:
    """A provide another node (or this one) must have been called with `provide_args`;
    its `provide_ret` values come back to the requirer."""

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


class RequireLocal(_ProvideRequire):
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


class RequireExternal(_ProvideRequire):
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
            if isinstance(require, Require | _ProvideRequire):
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


# -- the catalog -------------------------------------------------------------------------


class Catalog:
    """The lifecycles a node knows, by name; finds provides by xpath and checks the
    references between lifecycles."""

    def __init__(self, lifecycles: Iterable[type[Lifecycle]] = ()) -> None:
        self._lifecycles: dict[str, type[Lifecycle]] = {}
        for lifecycle in lifecycles:
            self.add(lifecycle)

    def add(self, lifecycle: type[Lifecycle]) -> None:
        if not (isinstance(lifecycle, type) and issubclass(lifecycle, Lifecycle)):
            raise Invalid(f"{lifecycle!r} is not a Lifecycle subclass")
        if not lifecycle._by_name:
            raise Invalid(f"{lifecycle.__qualname__} is abstract: it declares no states")
        if lifecycle.name in self._lifecycles:
            raise Conflict(f"a lifecycle named {lifecycle.name} is already loaded")
        self._lifecycles[lifecycle.name] = lifecycle

    def __iter__(self) -> Iterator[type[Lifecycle]]:
        return iter(self._lifecycles.values())

    def __len__(self) -> int:
        return len(self._lifecycles)

    def __contains__(self, name: object) -> bool:
        return name in self._lifecycles

    def names(self) -> list[str]:
        return sorted(self._lifecycles)

    def get(self, name: str) -> type[Lifecycle]:
        try:
            return self._lifecycles[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"no lifecycle {name!r} (lifecycles: {known})") from None

    def provides(self) -> list[ProvideRef]:
        return [ref for lifecycle in self for ref in lifecycle.provides()]

    def find(self, xpath: str | XPath) -> list[ProvideRef]:
        """Every provide the xpath selects (its node part is not looked at here)."""
        parsed = xpath if isinstance(xpath, XPath) else XPath.parse(xpath)
        return [
            ref
            for ref in self.provides()
            if parsed.matches(ref.lifecycle.name, ref.state.name, ref.provide.name)
        ]

    def resolve(self, xpath: str | XPath) -> ProvideRef:
        """The one provide the xpath selects: NotFound if none, Invalid if several (listed)."""
        parsed = xpath if isinstance(xpath, XPath) else XPath.parse(xpath)
        found = self.find(parsed)
        if len(found) == 1:
            return found[0]
        if found:
            listing = ", ".join(ref.xpath for ref in found)
            raise Invalid(
                f"xpath {parsed.text!r} is ambiguous: it matches {listing}",
                matches=[ref.xpath for ref in found],
            )
        raise NotFound(f"no provide matches {parsed.text!r}; {self._hint(parsed)}")

    def _hint(self, xpath: XPath) -> str:
        named = [name for _, name in xpath.steps if name in self._lifecycles]
        if named:
            lifecycle = self._lifecycles[named[0]]
            return f"{lifecycle.name} has " + ", ".join(ref.xpath for ref in lifecycle.provides())
        return "lifecycles: " + (", ".join(self.names()) or "none")

    def problems(self) -> dict[str, list[str]]:
        """Lifecycle name -> what is wrong with its references to others (none: not listed)."""
        problems: dict[str, list[str]] = {}
        depends: dict[str, set[str]] = {}
        for ref in self.provides():
            found = self._ref_problems(ref, depends.setdefault(ref.xpath, set()))
            if found:
                problems.setdefault(ref.lifecycle.name, []).extend(
                    f"{ref.xpath}: {problem}" for problem in found
                )
            state = ref.state.name
            if ref.provide.name != "enter":
                depends[ref.xpath].add(f"{ref.lifecycle.name}/{state}/enter")
            elif state != ref.lifecycle.initial():
                way = shortest_forward(ref.lifecycle.edges(), ref.lifecycle.initial(), state)
                before = [ref.lifecycle.initial(), *(way or [])][-2]
                depends[ref.xpath].add(f"{ref.lifecycle.name}/{before}/enter")
        cycle = find_cycle(depends)
        if cycle is not None:
            name = cycle[0].split("/")[0]
            problems.setdefault(name, []).append("requires form a cycle: " + " -> ".join(cycle))
        return problems

    def check(self) -> None:
        """Raise Invalid naming every problem `problems()` finds."""
        problems = self.problems()
        if problems:
            listing = [problem for name in sorted(problems) for problem in problems[name]]
            raise Invalid("lifecycles are inconsistent: " + "; ".join(listing), problems=listing)

    def _ref_problems(self, ref: ProvideRef, depends: set[str]) -> list[str]:
        problems: list[str] = []
        variables: list[Variable[Any]] = list(ref.provide.returns)
        for require in ref.provide.requires:
            if isinstance(require, Require):
                variables += require.variables
                continue
            variables += [*require.provide_args, *require.provide_ret]
            what = f"require {require.name!r}"
            target = self._target(require.xpath_text, what, problems)
            if target is None:
                continue
            depends.add(target.xpath)
            if require.local and target.lifecycle is ref.lifecycle:
                problems.append(f"{what}: a provide cannot require its own lifecycle locally")
            offered = {v.name: v for v in target.provide.user_variables()}
            returned = {v.name: v for v in target.provide.returns}
            problems += _matching(require.provide_args, offered, f"{what} provide_args", target)
            problems += _matching(require.provide_ret, returned, f"{what} provide_ret", target)
        for variable in variables:
            if variable.from_xpath is None:
                continue
            what = f"variable {variable.name!r} from_xpath"
            target = self._target(variable.from_xpath, what, problems)
            if target is None:
                continue
            sources = {**target.provide.arguments(), **{v.name: v for v in target.provide.returns}}
            source = sources.get(variable.name)
            if not isinstance(source, Variable):
                problems.append(
                    f"{what}: {target.xpath} takes or returns no variable {variable.name!r}"
                )
            elif source.kind != variable.kind:
                problems.append(
                    f"{what}: {target.xpath} has {variable.name!r} as {source.kind}, "
                    f"not {variable.kind}"
                )
        return problems

    def _target(self, xpath: str, what: str, problems: list[str]) -> ProvideRef | None:
        try:
            return self.resolve(xpath)
        except (Invalid, NotFound) as exc:
            problems.append(f"{what}: {exc.message}")
            return None


def _matching(
    variables: Sequence[Variable[Any]],
    available: Mapping[str, Variable[Any]],
    what: str,
    target: ProvideRef,
) -> list[str]:
    problems = []
    for variable in variables:
        other = available.get(variable.name)
        if other is None:
            known = ", ".join(available) or "none"
            problems.append(f"{what}: {target.xpath} has no {variable.name!r} (it has: {known})")
        elif other.kind != variable.kind:
            problems.append(
                f"{what}: {variable.name!r} is {variable.kind} here but {other.kind} "
                f"in {target.xpath}"
            )
    return problems
