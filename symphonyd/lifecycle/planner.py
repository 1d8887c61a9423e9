"""Plans: every step a deployment (or a goto, or a call) takes, on which node, in which
order, with which values — worked out entirely before anything runs.

`Planner.call(node, ref, ...)` plans calling a provide on a node: the states to leave and
enter on the way (`paths.moves`, from the stack the plan has reached so far), and for each
`enter` and the call itself what its requires need:

* `Require` variables become *questions*, answered from `answers` (keys are question ids
  `/<node>/<Lifecycle>/<State>/<provide>/<variable>`, or any tail of one at a `/`, such as
  `port` or `Configured/enter/port`; the most specific key wins), else suggested: the
  value the requirer passes (`provide_args`), the variable's default, the value of its
  `from_xpath`, or an answer given to a same-named variable earlier in the plan;
* `RequireLocal`: the target provide is planned on the same node first (recursively);
* `RequireExternal`: a question chooses the nodes (`/<node>/.../<require name>`, a list of
  node names; suggested: the nodes where the provide already holds, then other members
  that loaded the lifecycle), and the target is planned on each of them first.

A provide that already holds with the same values (the store's `calls` of that node) is
reused, not called again; a state already applied is not entered again. So planning a
finished deployment again gives no steps.

Values a provider returns are bound at run time: a step's `inputs` name the provider calls
(node, lifecycle, "State/provide") and the return variables to take from them.

Pure: reads a `View` of the cluster, never the store itself; does no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.lifecycle.model import (
    Catalog,
    Lifecycle,
    ProvideRef,
    Require,
    RequireExternal,
    RequireLocal,
    XPath,
)
from symphonyd.lifecycle.paths import Move, moves
from symphonyd.lifecycle.plans import (
    Input,
    Key,
    Plan,
    PlannedStep,
    Question,
    SecretValue,
    View,
    answer_matches,
)
from symphonyd.lifecycle.variables import Variable
from symphonyd.security import is_sealed

__all__ = [
    "Input",
    "Plan",
    "PlannedStep",
    "Planner",
    "Question",
    "SecretValue",
    "View",
    "answer_matches",
    "leave_problems",
    "undo_steps",
]


class Planner:
    def __init__(
        self,
        catalog: Catalog,
        view: View,
        answers: Mapping[str, object] | None = None,
        *,
        take_suggestions: bool = False,
    ) -> None:
        self.catalog = catalog
        self.view = view
        self.answers = dict(answers or {})
        self.take_suggestions = take_suggestions
        self._stacks: dict[Key, list[str]] = {}
        self._last: dict[Key, int] = {}
        self._planned: dict[tuple[str, str, str], int] = {}  # provider -> step
        self._in_progress: list[tuple[str, str]] = []
        self._scope: dict[str, Any] = {}
        self.plan = Plan(target="", node="")

    # -- entry points ------------------------------------------------------------------

    def deploy(self, xpath: str, node: str) -> Plan:
        """Plan calling the provide `xpath` selects on `node` (or the node the xpath names)."""
        parsed = XPath.parse(xpath)
        ref = self.catalog.resolve(parsed)
        node = parsed.node or node
        self.plan = Plan(target=ref.xpath, node=node)
        provider = self.call(node, ref, {}, why="the target")
        if provider is not None:
            self.plan.result = provider
            step = self._planned.get(provider, -1)
            self.plan.result_step = step if step >= 0 else None
        return self._finish()

    def _finish(self) -> Plan:
        """Checks on the whole plan: an answer no question takes (a typo, a wrong id, or a
        value for a step not needed because it already holds) is listed in `unused`, never
        ignored silently; states left under a consumer are problems."""
        self.plan.unused = [
            key
            for key in self.answers
            if not any(answer_matches(q, key) for q in self.plan.questions)
        ]
        self.plan.problems += leave_problems(self.plan.steps, self.view)
        return self.plan

    def goto(self, node: str, lifecycle: str, state: str) -> Plan:
        """Plan making `state` the current state of `lifecycle` on `node`."""
        target = self.catalog.get(lifecycle)
        target.get_state(state)
        self.plan = Plan(target=f"{lifecycle}/{state}", node=node)
        if self._check_node(node, target):
            self._moves_to(node, target, state, {}, why="goto")
        return self._finish()

    # -- planning ----------------------------------------------------------------------

    def call(
        self, node: str, ref: ProvideRef, given: dict[str, Any], *, why: str
    ) -> tuple[str, str, str] | None:
        """Plan `ref` holding on `node`; the provider to take its returns from (None when
        the plan cannot get there: the reason is in `problems`)."""
        lifecycle, state, name = ref.lifecycle, ref.state.name, ref.provide.name
        provider = (node, lifecycle.name, f"{state}/{name}")
        if provider in self._planned:
            return provider if self._agrees(provider, ref, given, why) else None
        if (node, ref.xpath) in self._in_progress:
            chain = " -> ".join(f"{n}:{x}" for n, x in self._in_progress)
            self.plan.problems.append(f"requires form a cycle: {chain} -> {node}:{ref.xpath}")
            return None
        if not self._check_node(node, lifecycle):
            return None
        self._in_progress.append((node, ref.xpath))
        try:
            stack = self._stack(node, lifecycle)
            if name == "enter":
                if state in stack:
                    if not self._agrees(provider, ref, given, why):
                        return None
                    self._reuse(provider, f"{node}: {lifecycle.name} is already in {state}")
                    return provider
                return provider if self._moves_to(node, lifecycle, state, given, why) else None
            if state not in stack and not self._moves_to(node, lifecycle, state, {}, why):
                return None
            index = self._provide_step(node, lifecycle, state, name, "call", given, why)
            return provider if index is not None else None
        finally:
            self._in_progress.pop()

    def _moves_to(
        self,
        node: str,
        lifecycle: type[Lifecycle],
        state: str,
        given: dict[str, Any],
        why: str,
    ) -> bool:
        key = (node, lifecycle.name)
        try:
            planned: list[Move] = moves(lifecycle.edges(), self._stack(node, lifecycle), state)
        except (Conflict, Invalid, NotFound) as exc:
            self.plan.problems.append(f"{node}: {lifecycle.name}: {exc.message}")
            return False
        for number, (action, name) in enumerate(planned, 1):
            if action == "leave":
                self._add_step(
                    PlannedStep(0, node, lifecycle.name, "leave", name, None, why=why), key
                )
                self._stacks[key].pop()
                continue
            last = number == len(planned)
            index = self._provide_step(
                node, lifecycle, name, "enter", "enter", given if last else {}, why
            )
            if index is None:
                return False
        return True

    def _provide_step(
        self,
        node: str,
        lifecycle: type[Lifecycle],
        state: str,
        name: str,
        action: str,
        given: dict[str, Any],
        why: str,
    ) -> int | None:
        key = (node, lifecycle.name)
        item = lifecycle.get_state(state).get_provide(name)
        where = f"/{node}/{lifecycle.name}/{state}/{name}"
        values: dict[str, Any] = {}
        inputs: list[Input] = []
        after: list[int] = []
        ok = True
        for require in item.requires:
            if isinstance(require, Require):
                for variable in require.variables:
                    values[variable.name] = self._value(where, variable, given)
                continue
            args = {v.name: self._value(where, v, {}) for v in require.provide_args}
            if not require.multiple:
                values.update(args)  # a single provider's args reach the body directly
            target = self.catalog.resolve(require.xpath_text)
            if isinstance(require, RequireLocal):
                chosen = [node]
            else:
                chosen = self._nodes(where, node, require, target)
            providers = []
            for other in chosen:
                provider = self.call(other, target, args, why=f"{where} requires {target.xpath}")
                if provider is None:
                    ok = False
                    continue
                providers.append(provider)
                if self._planned.get(provider, -1) >= 0:
                    after.append(self._planned[provider])
            inputs.append(
                Input(
                    tuple(providers),
                    tuple(v.name for v in require.provide_ret),
                    require.name if require.multiple else None,
                    local=isinstance(require, RequireLocal),
                    args=args,
                )
            )
        if not ok:
            return None
        provider = (node, lifecycle.name, f"{state}/{name}")
        if action == "call" and self._holds_with(provider, values):
            self._reuse(provider, f"{node}: {lifecycle.name}/{state}/{name} already holds")
            return -1
        step = PlannedStep(
            0, node, lifecycle.name, action, state, name, values, inputs, sorted(set(after)), why
        )
        index = self._add_step(step, key)
        if action == "enter":
            self._stacks[key].append(state)
        self._planned[provider] = index
        return index

    def _add_step(self, step: PlannedStep, key: Key) -> int:
        step.index = len(self.plan.steps)
        if key in self._last:
            step.after = sorted({*step.after, self._last[key]})
        self._last[key] = step.index
        self.plan.steps.append(step)
        return step.index

    def _stack(self, node: str, lifecycle: type[Lifecycle]) -> list[str]:
        key = (node, lifecycle.name)
        if key not in self._stacks:
            self._stacks[key] = list(self.view.applied.get(key) or [lifecycle.initial()])
        return self._stacks[key]

    def _check_node(self, node: str, lifecycle: type[Lifecycle]) -> bool:
        if node not in self.view.members:
            known = ", ".join(self.view.members)
            self.plan.problems.append(f"{node} is not a cluster member (members: {known})")
            return False
        if node not in self.view.catalogs:
            self.plan.problems.append(f"{node} has not published its lifecycles yet (starting?)")
            return False
        if lifecycle.name not in self.view.catalogs[node]:
            self.plan.problems.append(f"{node} has not loaded the lifecycle {lifecycle.name}")
            return False
        return True

    def _holds_with(self, provider: tuple[str, str, str], values: dict[str, Any]) -> bool:
        node, lifecycle, provide = provider
        call = self.view.calls.get((node, lifecycle), {}).get(provide)
        if call is None:
            return False
        recorded = call.get("values") or {}
        return all(
            recorded.get(name) == value
            for name, value in values.items()
            if not isinstance(value, SecretValue)
        )

    def _agrees(
        self, provider: tuple[str, str, str], ref: ProvideRef, given: dict[str, Any], why: str
    ) -> bool:
        """Whether a provider already planned or holding can serve a requirer that passes
        `given`; if not, the plan says which values differ (a provide holds one set)."""
        conflict = self._other_values(provider, ref, given)
        if conflict:
            self.plan.problems.append(
                f"/{provider[0]}/{ref.xpath} is needed with {conflict} ({why}); a provide "
                "holds one set of values at a time: answer the same values, or leave it first"
            )
        return not conflict

    def _other_values(
        self, provider: tuple[str, str, str], ref: ProvideRef, given: dict[str, Any]
    ) -> str:
        """What `given` (a requirer's provide_args) asks differently from the values the
        provider is planned with in this plan, or holds with; "" when nothing differs."""
        index = self._planned.get(provider, -1)
        if index >= 0:
            held, source = self.plan.steps[index].values, "this plan has"
        else:
            node, lifecycle, provide = provider
            call = self.view.calls.get((node, lifecycle), {}).get(provide) or {}
            held, source = call.get("values") or {}, "it holds"
        variables = {
            variable.name: variable
            for require in ref.provide.requires
            if isinstance(require, Require)
            for variable in require.variables
        }
        differ = []
        for name, value in sorted(given.items()):
            variable, have = variables.get(name), held.get(name)
            if variable is None or variable.is_secret or value is None or have is None:
                continue
            if isinstance(have, SecretValue) or is_sealed(have):
                continue
            try:
                wanted = _json(variable, variable.parse(value, members=self.view.members))
            except Invalid:
                wanted = value  # its own question says what is wrong with it
            if wanted != have:
                differ.append(f"{name}={wanted!r} ({source} {have!r})")
        return ", ".join(differ)

    def _reuse(self, provider: tuple[str, str, str], note: str) -> None:
        self._planned.setdefault(provider, -1)
        if note not in self.plan.reused:
            self.plan.reused.append(note)

    # -- questions ---------------------------------------------------------------------

    def _answer(self, question_id: str) -> tuple[bool, object]:
        best: tuple[int, object] | None = None
        for key, value in self.answers.items():
            if answer_matches(question_id, key):
                weight = len(key.strip("/"))
                if best is None or weight > best[0]:
                    best = (weight, value)
        return (False, None) if best is None else (True, best[1])

    def _value(self, where: str, variable: Variable[Any], given: dict[str, Any]) -> Any:
        question_id = f"{where}/{variable.name}"
        if question_id in self.plan.questions:
            return self.plan.questions[question_id].value
        suggestion = given.get(variable.name)
        if suggestion is None and variable.default is not None:
            suggestion = variable.to_json(variable.default, reveal=True)
        if suggestion is None and variable.from_xpath is not None:
            suggestion = self._from_xpath(variable)
        if suggestion is None and not variable.is_secret:
            suggestion = self._scope.get(variable.name)
        question = Question(
            question_id,
            "value",
            variable.label,
            variable.help,
            variable=variable.describe(),
            suggestion=suggestion,
            secret=variable.is_secret,
            expert=variable.expert,
        )
        answered, raw = self._answer(question_id)
        if variable.name in given and not answered:
            # what the requirer passes is decided by the requirer's own question
            answered, raw = True, given[variable.name]
            question.derived = True
        try:
            if answered:
                question.answered = True
                question.value = _json(variable, variable.parse(raw, members=self.view.members))
            elif suggestion is not None and (self.take_suggestions or variable.expert):
                question.value = _json(
                    variable, variable.parse(suggestion, members=self.view.members)
                )
            elif not variable.required:
                question.answered = True
        except Invalid as exc:
            question.error = exc.details.get("fields", {}).get(variable.name, exc.message)
            question.value = None
        self.plan.questions[question_id] = question
        if question.value is not None and not variable.is_secret:
            self._scope.setdefault(variable.name, question.value)
        return question.value

    def _from_xpath(self, variable: Variable[Any]) -> Any:
        assert variable.from_xpath is not None
        for ref in self.catalog.find(variable.from_xpath):
            provide = f"{ref.state.name}/{ref.provide.name}"
            for (_, lifecycle), calls in sorted(self.view.calls.items()):
                call = calls.get(provide) if lifecycle == ref.lifecycle.name else None
                if call is None:
                    continue
                for source in ("values", "returns"):
                    value = (call.get(source) or {}).get(variable.name)
                    if value is not None and not isinstance(value, str | int | float | bool):
                        continue
                    if value is not None and not is_sealed(value):
                        return value
        return None

    def _nodes(
        self, where: str, node: str, require: RequireExternal | RequireLocal, target: ProvideRef
    ) -> list[str]:
        question_id = f"{where}/{require.name}"
        if question_id in self.plan.questions:
            return list(self.plan.questions[question_id].value or [])
        low, high = require.nargs_range()
        eligible = [
            member
            for member in self.view.members
            if member != node and target.lifecycle.name in self.view.catalogs.get(member, set())
        ]
        pinned = require.xpath.node if require.xpath is not None else None
        if pinned is not None:  # `/n2/WebSite//start`: that node only
            eligible = [member for member in eligible if member == pinned]
        provide = f"{target.state.name}/{target.provide.name}"
        holders = [
            m for m in eligible if provide in self.view.calls.get((m, target.lifecycle.name), {})
        ]
        reachable = self.view.reachable
        others = [m for m in eligible if m not in holders and (reachable is None or m in reachable)]
        if require.nargs == "*":
            suggestion = holders or others
        else:
            wanted = max(low, 1) if require.nargs != "?" else 1
            suggestion = (holders + others)[:wanted]
            if require.nargs == "?" and not holders:
                suggestion = []
        question = Question(
            question_id,
            "nodes",
            f"nodes for {require.label}",
            require.help or f"the nodes that provide {target.xpath} to {where}",
            nargs=require.nargs,
            choices=eligible,
            suggestion=suggestion,
        )
        answered, raw = self._answer(question_id)
        try:
            if answered:
                question.answered = True
                question.value = self._check_nodes(raw, node, eligible, low, high, self.view)
            elif self.take_suggestions:
                question.value = self._check_nodes(suggestion, node, eligible, low, high, self.view)
        except Invalid as exc:
            question.error = exc.message
            question.value = None
        self.plan.questions[question_id] = question
        return list(question.value or [])

    @staticmethod
    def _check_nodes(
        raw: object, node: str, eligible: Collection[str], low: int, high: int | None, view: View
    ) -> list[str]:
        members, catalogs = view.members, view.catalogs
        if isinstance(raw, str):
            raw = [item.strip() for item in raw.split(",") if item.strip()]
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise Invalid("give node names: a list, or names separated by commas")
        if len(set(raw)) != len(raw):
            raise Invalid("a node is named twice")
        for item in raw:
            if item == node:
                raise Invalid(
                    f"{item} is the requiring node itself: "
                    "an external require is met by other nodes"
                )
            if item in members and item not in catalogs:
                raise Invalid(f"{item} has not published its lifecycles yet (is it starting?)")
            if item not in eligible:
                known = ", ".join(eligible) or "none"
                raise Invalid(f"{item} cannot provide it (nodes that can: {known})")
        if len(raw) < low or (high is not None and len(raw) > high):
            wanted = (
                f"exactly {low}"
                if low == high
                else f"{low} to {high}"
                if high
                else f"at least {low}"
            )
            raise Invalid(f"{wanted} nodes are needed, not {len(raw)}")
        return list(raw)


def _json(variable: Variable[Any], value: Any) -> Any:
    if value is None:
        return None
    data = variable.to_json(value, reveal=True)
    return SecretValue(data) if variable.is_secret and isinstance(data, str) else data


def undo_steps(
    deployment: Mapping[str, Any], applied: Mapping[Key, list[str]], initial: Mapping[str, str]
) -> list[PlannedStep]:
    """Leave the states `deployment` entered (and still applied), newest first; a state
    is left after every state above it on its stack. Each step waits for the one before."""
    stacks: dict[Key, list[str]] = {}
    steps: list[PlannedStep] = []
    for step in reversed(deployment["steps"]):
        if step["action"] != "enter" or step["status"] != "done":
            continue
        key = (step["node"], step["lifecycle"])
        stack = stacks.setdefault(key, list(applied.get(key) or [initial[step["lifecycle"]]]))
        while step["state"] in stack[1:]:
            state = stack.pop()
            index = len(steps)
            steps.append(
                PlannedStep(
                    index,
                    key[0],
                    key[1],
                    "leave",
                    state,
                    None,
                    after=[index - 1] if index else [],
                    why=f"undo {deployment['id']}",
                )
            )
    return steps


def leave_problems(steps: list[PlannedStep], view: View) -> list[str]:
    """Leaving a state whose provides another lifecycle consumed (the `uses` of its calls)
    is refused while that consumer still holds, unless the plan leaves the consumer's
    state first: dependents are never left dangling."""
    left: set[tuple[str, str, str]] = set()
    problems = []
    for step in steps:
        if step.action != "leave":
            continue
        for (node, lifecycle), calls in sorted(view.calls.items()):
            for provide, call in calls.items():
                consumer = (node, lifecycle, provide.split("/", 1)[0])
                if consumer in left:
                    continue
                for used in call.get("uses") or []:
                    if (used[0], used[1]) == (step.node, step.lifecycle) and used[2].split("/", 1)[
                        0
                    ] == step.state:
                        problems.append(
                            f"cannot leave {step.lifecycle}/{step.state} on {step.node}: "
                            f"{lifecycle}/{provide} on {node} uses its {used[2]} "
                            "(leave or undo that first)"
                        )
        left.add((step.node, step.lifecycle, step.state))
    return problems
