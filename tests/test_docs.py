"""The README's command table keeps in step with the CLI (issue 16, item 11): every
command and subcommand of `symphonyd` is named there, and every `--option` the table
shows exists on the command it is shown for. Read from click itself, no daemon."""

from __future__ import annotations

import re
from pathlib import Path

import click

from symphonyd.cli.main import main

README = Path(__file__).resolve().parent.parent / "README.md"


def command_table() -> list[str]:
    text = README.read_text()
    start = text.index("| command | what it does |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split(" | ")[0])
    return rows


def spans(rows: list[str]) -> list[list[str]]:
    """The words of each code span of the table's first column."""
    found = []
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row):
            found.append([w for w in re.split(r"[\s/|\\]+", span) if w])
    return found


def test_every_command_is_in_the_readme_table() -> None:
    words = spans(command_table())
    missing = []
    for name, command in sorted(main.commands.items()):
        mine = [w for w in words if w and w[0] == name]
        if not mine:
            missing.append(name)
            continue
        if isinstance(command, click.Group):
            named = {word for span in mine for word in span[1:]}
            missing += [f"{name} {sub}" for sub in sorted(command.commands) if sub not in named]
    assert not missing, f"the README's command table lacks: {', '.join(missing)}"


def _options(command: click.Command) -> set[str]:
    found = set()
    for param in command.params:
        found.update(o for o in getattr(param, "opts", []) if o.startswith("--"))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _options(sub)
    return found


def test_every_option_the_table_shows_exists() -> None:
    wrong = []
    for words in spans(command_table()):
        command = main.commands.get(words[0]) if words else None
        if command is None:
            continue
        known = _options(command)
        for word in words[1:]:
            option = word.strip("[]").split("=")[0]
            if option.startswith("--") and option not in known:
                wrong.append(f"{words[0]} {option}")
    assert not wrong, f"the README shows options the CLI lacks: {', '.join(sorted(wrong))}"
