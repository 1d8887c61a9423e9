"""The catalog: the lifecycles a node knows, found by name and their provides by xpath.

`Catalog.find` and `Catalog.resolve` turn an xpath into the provides it selects (`resolve`
wants exactly one: NotFound if none, Invalid listing them if several). `Catalog.check`
checks what lifecycles say of each other, which no single class statement can: each xpath
of a require or of a variable's from_xpath selects one provide, provide_args and
provide_ret match what the target takes and returns (by name and kind), a from_xpath
variable exists on its target with the same kind, no provide requires its own lifecycle
locally, and the requires form no cycle.

This module sits above `model`: it imports `Lifecycle` and `ProvideRef` from there, and
re-exports `ProvideRef` (defined in `model` because `Lifecycle.provides` returns it).
`model` must not import this module at import time; it hands out `Catalog` lazily for the
code that still imports it from there. The catalog only describes and checks: it runs no
provide body, does no I/O and knows nothing of nodes, the store or the agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.lifecycle.model import Lifecycle, ProvideRef
from symphonyd.lifecycle.paths import find_cycle, shortest_forward
from symphonyd.lifecycle.requires import Require
from symphonyd.lifecycle.variables import Variable
from symphonyd.lifecycle.xpath import XPath

__all__ = ["Catalog", "ProvideRef"]


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
