"""Running one step of a deployment on this node: leave a state, enter one, or call a
provide, and say what changed.

`run_step` is blocking (bodies do real work: the agent calls it in a thread). It trusts
nothing it is handed: the step must still fit where the lifecycle stands (the plan may be
stale), the values are validated again against the provide's variables, a local
provider must be on this node, and every value taken from a provider's return values is
checked against the requirer's `provide_ret` variables. A body that raises fails the
step with a one-line reason (the traceback goes to the node's log); the secret values the
step has in scope are masked in both and in what its bodies log (`redact.py`), so a
password a failing command quoted never reaches the API, the events, the log or the
journal. A failed `enter` is
rolled back by running the state's `leave`, best effort. Under `simulate` no body runs
and no lifecycle changes: the steps only go through the plan.

The outcome is plain data: the step's status, error and return values, and the new
record of the lifecycle (applied states, runtime data, the call that now holds), secrets
sealed by `seal`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from symphonyd.errors import Invalid, SymphonyError
from symphonyd.lifecycle.context import NodeContext
from symphonyd.lifecycle.model import Catalog, Lifecycle, Provide, State, _ProvideRequire
from symphonyd.lifecycle.variables import Secret, Variable, dump_values, validate_values
from symphonyd.redact import REDACTOR
from symphonyd.security import is_sealed

log = logging.getLogger("symphonyd.lifecycle")

__all__ = ["Outcome", "StepFailed", "ensure_applied", "run_step"]

Returns = Callable[[str, str, str], dict[str, Any] | None]  # provider -> its return values


class StepFailed(SymphonyError):
    """A step that cannot run here, or whose body failed."""


@dataclass
class Outcome:
    status: str  # "done" or "failed"
    error: str | None = None
    returns: dict[str, Any] | None = None
    lifecycle: dict[str, Any] | None = None  # {node, lifecycle, applied, data, call}
    log: list[str] = field(default_factory=list)  # what the bodies logged (context.log)


@dataclass(frozen=True)
class StepEnv:
    """What running a step on this node needs besides the step and the lifecycle record."""

    node: str
    returns_of: Returns
    make_context: Callable[[str, dict[str, Any]], NodeContext]
    seal: Callable[[str], str]
    unseal: Callable[[str], str]
    members: list[str]
    deployment: str
    now: str
    simulate: bool = False


def run_step(
    catalog: Catalog, step: Mapping[str, Any], record: Mapping[str, Any] | None, env: StepEnv
) -> Outcome:
    capture = _LogCapture()
    logger = logging.getLogger(f"symphonyd.lifecycle.{step['lifecycle']}")
    logger.addHandler(capture)
    try:
        outcome = _run(catalog, step, record, env)
    except StepFailed as exc:
        outcome = Outcome("failed", exc.message)
    finally:
        logger.removeHandler(capture)
    outcome.log = capture.lines
    return outcome


class _LogCapture(logging.Handler):
    """The lines a step's bodies log through `context.log` (bounded), for its record."""

    LIMIT = 50

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < self.LIMIT:
            line = f"{record.levelname.lower()}: {REDACTOR.scrub(record.getMessage())}"
            self.lines.append(line[:500])


def _run(
    catalog: Catalog, step: Mapping[str, Any], record: Mapping[str, Any] | None, env: StepEnv
) -> Outcome:
    node, make_context, seal, unseal = env.node, env.make_context, env.seal, env.unseal
    members, simulate = env.members, env.simulate
    if step["node"] != node:
        raise StepFailed(f"step for {step['node']} handed to {node}")
    if step["lifecycle"] not in catalog:
        raise StepFailed(f"{node} has not loaded the lifecycle {step['lifecycle']}")
    lifecycle = catalog.get(step["lifecycle"])
    applied = list((record or {}).get("applied") or [lifecycle.initial()])
    data = dict((record or {}).get("data") or {})
    action, state = step["action"], step["state"]
    if not simulate:
        _check_position(lifecycle, applied, action, state)
    if action == "leave":
        if not simulate:
            instance = _instance(lifecycle, state, make_context(lifecycle.name, data))
            _body(f"{lifecycle.name}/{state}/leave", instance.leave)
        change = {"applied": applied[:-1], "data": data, "call": None}
        return Outcome("done", returns={}, lifecycle=None if simulate else _change(step, change))
    item = lifecycle.get_state(state).get_provide(step["provide"])
    values = _values(item, step.get("values") or {}, unseal, members)
    xpath = f"{lifecycle.name}/{state}/{item.name}"
    if simulate:  # what simulated providers "returned" is not real: not checked
        result = {v.name: _simulated(v) for v in item.returns}
        return Outcome("done", returns=result)
    kwargs = dict(values)
    for given in step.get("inputs") or []:
        kwargs.update(_input(item, given, node, env.returns_of, unseal, members))
    context = make_context(lifecycle.name, data)
    instance = _instance(lifecycle, state, context)
    with REDACTOR.hiding(_secrets_in(kwargs)):  # from its error, its log lines, the log
        try:
            try:
                raw = _body(xpath, lambda: item.func(instance, **kwargs))
                checked = _wrap_invalid(xpath, lambda: item.check_returns(raw))
            except StepFailed:
                if action == "enter":
                    _rollback(lifecycle, state, instance, xpath)
                raise
            if action == "call" and item.flags:
                for above in applied[applied.index(state) + 1 :]:
                    crossing = _instance(lifecycle, above, context)
                    _body(f"{lifecycle.name}/{above}/cross", partial(crossing.cross, **item.flags))
        except StepFailed as exc:
            raise StepFailed(REDACTOR.scrub(exc.message)) from None
    returned = _sealed(dump_values(item.returns, checked, reveal=True), list(item.returns), seal)
    user = [v for r in item.requires for v in _variables_of(r)]
    stored_values = _sealed(dump_values(user, values, reveal=True), user, seal)
    new_applied = [*applied, state] if action == "enter" else applied
    call = {
        "provide": f"{state}/{item.name}",
        "values": stored_values,
        "returns": returned,
        "deployment": env.deployment,
        "at": env.now,
        # the provider calls it consumed: leaving their states is refused while it holds
        "uses": [list(p) for given in step.get("inputs") or [] for p in given["providers"]],
    }
    change = {"applied": new_applied, "data": context.data, "call": call}
    return Outcome("done", returns=returned, lifecycle=_change(step, change))


def _check_position(
    lifecycle: type[Lifecycle], applied: list[str], action: str, state: str
) -> None:
    where = " -> ".join(applied)
    if action == "leave" and (len(applied) < 2 or applied[-1] != state):
        raise StepFailed(f"cannot leave {state}: {lifecycle.name} stands at {where}")
    if action == "enter" and (
        state in applied or state not in lifecycle.edges().get(applied[-1], ())
    ):
        raise StepFailed(
            f"cannot enter {state} from {where}: {lifecycle.name} moved since the plan "
            "was made; plan again"
        )
    if action == "call" and state not in applied:
        raise StepFailed(f"{lifecycle.name} is not in {state} ({where}); plan again")


def _variables_of(require: object) -> list[Variable[Any]]:
    if isinstance(require, _ProvideRequire):
        return [] if require.multiple else list(require.provide_args)
    return list(getattr(require, "variables", ()))


def _values(
    item: Provide, stored: Mapping[str, Any], unseal: Callable[[str], str], members: list[str]
) -> dict[str, Any]:
    variables = [v for r in item.requires for v in _variables_of(r)]
    opened = {name: _open(value, unseal) for name, value in stored.items()}
    return _wrap_invalid(
        item.name,
        lambda: validate_values(variables, opened, members=members, what=f"values of {item.name}"),
    )


def _input(
    item: Provide,
    given: Mapping[str, Any],
    node: str,
    returns_of: Returns,
    unseal: Callable[[str], str],
    members: list[str],
) -> dict[str, Any]:
    require = next(
        (
            r
            for r in item.requires
            if isinstance(r, _ProvideRequire)
            and (
                r.name == given.get("argument")
                or (not r.multiple and given.get("argument") is None)
            )
            and tuple(v.name for v in r.provide_ret) == tuple(given["returns"])
        ),
        None,
    )
    if require is None:
        raise StepFailed(f"{item.name}: the plan's inputs do not match its requires; plan again")
    dicts = []
    for provider in given["providers"]:
        provider_node, provider_lifecycle, provide = provider
        if require.local and provider_node != node:
            raise StepFailed(f"local require {require.name!r} met on another node {provider_node}")
        got = returns_of(provider_node, provider_lifecycle, provide)
        if got is None:
            raise StepFailed(
                f"{provider_lifecycle}/{provide} does not hold on {provider_node} "
                f"(required by {item.name} through {require.name!r})"
            )
        picked = {v.name: _open(got.get(v.name), unseal) for v in require.provide_ret}
        args = {
            v.name: _open((given.get("args") or {}).get(v.name), unseal)
            for v in require.provide_args
        }
        what = f"what {provider_lifecycle}/{provide} on {provider_node} gives"
        try:
            checked = validate_values(
                [*require.provide_args, *require.provide_ret],
                {**args, **picked},
                members=members,
                what=what,
            )
        except Invalid as exc:
            raise StepFailed(f"{require.name}: {exc.message}") from None
        dicts.append(checked)
    if require.multiple:
        return {require.name: dicts}
    if len(dicts) != 1:
        raise StepFailed(f"require {require.name!r} needs one provider, the plan has {len(dicts)}")
    return {k: v for k, v in dicts[0].items() if k not in {a.name for a in require.provide_args}}


def _open(value: Any, unseal: Callable[[str], str]) -> Any:
    if is_sealed(value):
        try:
            return unseal(value)
        except Invalid as exc:
            raise StepFailed(exc.message) from None
    return value


def _sealed(
    values: dict[str, Any], variables: list[Variable[Any]], seal: Callable[[str], str]
) -> dict[str, Any]:
    secret = {v.name for v in variables if v.is_secret}
    return {
        name: seal(value) if name in secret and isinstance(value, str) else value
        for name, value in values.items()
    }


def _secrets_in(values: object) -> list[str]:
    """The secret texts among values (Secrets, in lists and mappings too)."""
    if isinstance(values, Secret):
        return [values.reveal()]
    if isinstance(values, Mapping):
        return [text for value in values.values() for text in _secrets_in(value)]
    if isinstance(values, list | tuple):
        return [text for value in values for text in _secrets_in(value)]
    return []


def _simulated(variable: Variable[Any]) -> Any:
    if variable.default is not None:
        return variable.to_json(variable.default)
    return f"(simulated {variable.name})"


def _instance(lifecycle: type[Lifecycle], state: str, context: NodeContext) -> State:
    instance = lifecycle.get_state(state)()
    instance.context = context
    return instance


def _body(xpath: str, run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception as exc:
        log.error("%s failed:\n%s", xpath, traceback.format_exc())
        reason = exc.message if isinstance(exc, SymphonyError) else f"{type(exc).__name__}: {exc}"
        raise StepFailed(f"{xpath} failed: {reason}") from None


def _wrap_invalid(what: str, run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Invalid as exc:
        raise StepFailed(f"{what}: {exc.message}") from None


def _rollback(lifecycle: type[Lifecycle], state: str, instance: State, xpath: str) -> None:
    try:
        instance.leave()
    except Exception:
        log.warning("rolling back %s: leave failed too:\n%s", xpath, traceback.format_exc())


def _change(step: Mapping[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    return {"node": step["node"], "lifecycle": step["lifecycle"], **change}


def ensure_applied(
    catalog: Catalog,
    record: Mapping[str, Any],
    make_context: Callable[[str, dict[str, Any]], NodeContext],
) -> list[str]:
    """Run `ensure` of every applied state, bottom up; the problems, one line each."""
    problems = []
    name = record["lifecycle"]
    if name not in catalog:
        return [f"{name}: not loaded on this node"]
    lifecycle = catalog.get(name)
    context = make_context(name, dict(record.get("data") or {}))
    for state in record.get("applied") or []:
        try:
            instance = _instance(lifecycle, state, context)
            _body(f"{name}/{state}/ensure", instance.ensure)
        except (StepFailed, SymphonyError) as exc:
            problems.append(exc.message)
    return problems
