"""Xpaths: the names by which requires, variables and the catalog point at provides.

An xpath names provides: `[/<node> | //] <Lifecycle>/<State>/<provide>` where `/` is one
level, `//` any number of levels and `*` any name; `WebSite//start`,
`//WebSite//start` (any node), `WebServer/Active/start`, `/node-1/WebSite//start`, `//start`.

`XPath.parse` checks the text and `XPath.matches` tells whether one
<lifecycle>/<state>/<provide> is selected. This module works on names only: it must not
import the rest of the model (lifecycles, requires, the catalog), look at which provides
exist (that is `Catalog.find`), or do any I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from symphonyd.errors import Invalid
from symphonyd.validation import check_name

__all__ = ["XPath"]

_STEP_RE = re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]{0,62})$")


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
