"""What a plan is made of, as plain values: the `View` of the cluster a plan starts from,
its `Question`s, `PlannedStep`s and their `Input`s, and the `Plan` itself; and how an
answer's key names a question (`answer_matches`). The planning is `planner.py`, which
re-exports these. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from symphonyd.lifecycle.variables import MASK

__all__ = [
    "Input",
    "Key",
    "Plan",
    "PlannedStep",
    "Question",
    "SecretValue",
    "View",
    "answer_matches",
]

Key = tuple[str, str]  # (node, lifecycle)


@dataclass
class View:
    """What a plan starts from: members, what each node loaded, where lifecycles stand."""

    members: list[str]
    catalogs: dict[str, set[str]]  # node -> lifecycle names it loaded
    applied: dict[Key, list[str]] = field(default_factory=dict)
    calls: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    reachable: set[str] | None = None  # None: all


@dataclass
class Question:
    """A value the plan needs. `value` is the parsed answer or the suggestion taken."""

    id: str
    kind: str  # "value" or "nodes"
    label: str
    help: str
    variable: dict[str, Any] | None = None  # Variable.describe() for a value
    nargs: int | str | None = None  # for nodes
    choices: list[str] = field(default_factory=list)  # for nodes
    suggestion: Any = None
    answered: bool = False
    error: str | None = None
    value: Any = None
    secret: bool = False
    expert: bool = False
    derived: bool = False  # its value is what the requirer passes: never asked for

    @property
    def missing(self) -> bool:
        """Unanswered and without a value the plan may take, or answered wrongly."""
        return self.error is not None or (not self.answered and self.value is None)

    def describe(self) -> dict[str, Any]:
        shown = MASK if self.secret and self.value is not None else self.value
        suggestion = MASK if self.secret and self.suggestion is not None else self.suggestion
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "help": self.help,
            "variable": self.variable,
            "nargs": self.nargs,
            "choices": self.choices,
            "suggestion": suggestion,
            "answered": self.answered,
            "value": shown,
            "error": self.error,
            "secret": self.secret,
            "expert": self.expert,
            "derived": self.derived,
        }


@dataclass(frozen=True)
class Input:
    """Return values a step takes from provider calls: each `returns` variable of each
    provider; `argument` set for a multiple external require (a list of dicts)."""

    providers: tuple[tuple[str, str, str], ...]  # (node, lifecycle, "State/provide")
    returns: tuple[str, ...]
    argument: str | None = None
    local: bool = False
    args: Mapping[str, Any] = field(default_factory=dict)  # the provide_args given

    def describe(self) -> dict[str, Any]:
        return {
            "providers": [list(p) for p in self.providers],
            "returns": list(self.returns),
            "args": dict(self.args),
            "argument": self.argument,
            "local": self.local,
        }


@dataclass
class PlannedStep:
    index: int
    node: str
    lifecycle: str
    action: str  # "enter", "leave" or "call"
    state: str
    provide: str | None
    values: dict[str, Any] = field(default_factory=dict)
    inputs: list[Input] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    why: str = ""

    @property
    def xpath(self) -> str:
        return f"{self.lifecycle}/{self.state}/{self.provide or self.action}"


@dataclass
class Plan:
    target: str
    node: str
    steps: list[PlannedStep] = field(default_factory=list)
    questions: dict[str, Question] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    result: tuple[str, str, str] | None = None  # the provider call the target is
    result_step: int | None = None
    reused: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # answers no question took

    @property
    def missing(self) -> list[Question]:
        """The questions to answer. A derived value counts only when nothing that is
        asked is missing: it comes from another question, answered first."""
        wanting = [q for q in self.questions.values() if q.missing]
        return [q for q in wanting if not q.derived] or wanting

    @property
    def ready(self) -> bool:
        return not self.problems and not self.missing


def answer_matches(question_id: str, key: str) -> bool:
    """An answer's key names a question by its whole id or any tail of it at a `/`."""
    return question_id == key or question_id.endswith("/" + key.strip("/"))


class SecretValue(str):
    """Marks a revealed secret inside a plan (never compared, never shown)."""
