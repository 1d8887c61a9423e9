"""Human and JSON output for the CLI: aligned tables and progress bars (rich), pretty
JSON, human sizes. On a terminal, tables are drawn by rich (cells fold to its width);
when stdout is not a terminal they are plain aligned text, one record per line, never
cut or wrapped, so they pipe well (`--json` is for scripts).

rich is imported when a table or a progress bar is drawn, not before: a command that
prints JSON or one line starts faster without it."""

from __future__ import annotations

import json
import sys
import urllib.parse
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@cache
def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _table(**options: Any) -> Table:
    from rich.table import Table

    return Table(box=None, show_edge=False, pad_edge=False, **options)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cell(value: Any) -> str:
    """A value as a table shows it: lists joined with commas, mappings as key=value, never
    a Python repr; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | set):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _plain(rows: Sequence[Sequence[str]]) -> None:
    """Not a terminal: aligned columns, one record per line, never cut or wrapped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        last = len(row) - 1
        print("  ".join(v if i == last else v.ljust(widths[i]) for i, v in enumerate(row)))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        _plain([list(headers), *cells])
        return
    table = _table(header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in cells:
        table.add_row(*row)
    _console().print(table)


def print_kv_table(pairs: Sequence[tuple[str, Any]]) -> None:
    cells = [[str(key), cell(value)] for key, value in pairs]
    if not sys.stdout.isatty():
        _plain(cells)
        return
    table = _table(show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for row in cells:
        table.add_row(*row)
    _console().print(table)


def resource_path(kind: str, ref: str) -> str:
    """The API path of one resource by id, prefix or name (quoted: names are free text)."""
    return f"/v1/{kind}/" + urllib.parse.quote(ref, safe="")


def human_size(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


class ProgressBar(Protocol):
    """What the commands use of a progress display (rich's `Progress`, or nothing)."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...
    def add_task(self, description: str, *, total: float | None = None) -> Any: ...
    def update(self, task: Any, **fields: Any) -> None: ...


class _NoProgressBar:
    """No terminal: nothing to draw, and rich is not even imported (it costs start-up)."""

    def __enter__(self) -> _NoProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, *, total: float | None = None) -> int:
        return 0

    def update(self, task: Any, **fields: Any) -> None:
        return None


def progress_bar(enabled: bool) -> ProgressBar:
    if not enabled:
        return _NoProgressBar()
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        transient=True,
    )
    return cast(ProgressBar, bar)  # its keyword-typed update() is wider than the protocol says
