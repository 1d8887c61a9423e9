"""The docs keep in step with the CLI (issue 16, item 11): every command and subcommand of
`symphonyd` is named in the README's command table, every `--option` the table shows
exists on the command it is shown for, every `symphonyd ...` line in a code block of the
README and docs/ names a real command with real options, and docs/cli.md is what
`scripts/cli-reference` makes from the CLI's own --help. Read from click itself, no
daemon."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click

from symphonyd.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


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


def test_the_command_reference_is_current() -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli-reference"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr


def command_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of fenced code blocks that run `symphonyd` (after `$ ` or `sudo `)."""
    found, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        text = line.strip().removeprefix("$ ").removeprefix("sudo ")
        if fenced and text.startswith("symphonyd "):
            found.append((number, text))
    return found


def check_line(text: str) -> str | None:
    """What is wrong with one documented command line (None: nothing)."""
    text = text.split(" #")[0]
    text = re.split(r"\s(?:\||>|&&|;)\s|\s&$|\\$", text)[0]  # the symphonyd part only
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    words = [w.strip("[]") for w in words[1:] if w.strip("[]") and w != "..."]
    command: click.Command = main
    known = set(_own_options(main))
    taking = {o for p in main.params if not getattr(p, "is_flag", False) for o in p.opts}
    index = 0
    while index < len(words) and words[index].startswith("-"):  # global options first
        index += 2 if words[index].split("=")[0] in taking else 1
    while isinstance(command, click.Group) and index < len(words):
        sub = command.commands.get(words[index])
        if sub is None:
            return f"no command {words[index]!r} under {command.name!r}"
        command, index = sub, index + 1
        known |= _own_options(command)
    if isinstance(command, click.Group) and command is main:
        return "no command"
    for word in words[index:]:
        option = word.split("=")[0]
        if option.startswith("--") and option not in known:
            return f"{command.name} has no option {option}"
    return None


def _own_options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in getattr(p, "opts", []) if o.startswith("-")}


def test_every_command_line_in_the_docs_exists() -> None:
    wrong = []
    for path in DOCS:
        for number, text in command_lines(path):
            problem = check_line(text)
            if problem is not None:
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {text!r}: {problem}")
    assert not wrong, "\n".join(wrong)
    assert sum(len(command_lines(p)) for p in DOCS) > 30  # the check saw the docs' commands


def test_the_line_check_catches_a_wrong_command_or_option() -> None:
    assert check_line("symphonyd --data-dir /tmp/n1 volume create data --size 1G") is None
    assert "no command 'volumes'" in str(check_line("symphonyd volumes list"))
    assert "no option --sizes" in str(check_line("symphonyd volume create d --sizes 1G"))
