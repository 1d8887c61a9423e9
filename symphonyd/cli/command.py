"""What every command shares: `Context` (how to reach the node), `CommandGroup` (the one
place the error tree becomes one line on stderr and exit status 1) and `--json`.

Every group of the CLI is a `CommandGroup`, so no command maps errors itself.
Must not: import rich or yaml (this module is loaded on every start, `--version` too).
"""

from __future__ import annotations

import os
from typing import Any

import click

from symphonyd.client import Client, local_fingerprint
from symphonyd.errors import SymphonyError


class Context:
    """The click context object: where the node is and how to talk to it."""

    def __init__(
        self,
        socket_path: str | None,
        data_dir: str,
        addr: str | None,
        token: str | None,
        fingerprint: str | None,
    ) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path or os.path.join(data_dir, "control.sock")
        self.addr = addr
        self.token = token
        self.fingerprint = fingerprint
        self.explicit_data_dir: str | None = data_dir

    def client(self, *, local_only: bool = False, timeout: float = 60.0) -> Client:
        if self.addr and local_only:
            raise click.UsageError(
                "this command talks to the daemon of this host, over its control socket "
                f"({self.socket_path}): --addr/--manager-addr cannot be used with it; run "
                "it on the host (with --data-dir if the node's is not the default)"
            )
        if self.addr:
            fingerprint = self.fingerprint or local_fingerprint(self.data_dir)
            return Client(
                addr=self.addr, token=self.token, fingerprint=fingerprint, timeout=timeout
            )
        return Client(
            socket_path=self.socket_path,
            timeout=timeout,
            start_wait=start_wait(),
            on_wait=lambda text: click.echo(text, err=True),
        )


START_WAIT = 10.0  # seconds a command waits for a local daemon that is starting


def start_wait() -> float:
    """How long a command waits for a local daemon that is starting: SYMPHONYD_START_WAIT
    seconds (0: not at all), default START_WAIT."""
    text = os.environ.get("SYMPHONYD_START_WAIT", "")
    try:
        return max(0.0, min(float(text), 600.0)) if text else START_WAIT
    except ValueError:
        return START_WAIT


class CommandGroup(click.Group):
    """A click group whose commands' `SymphonyError`s (API errors, and network failures,
    which the client raises as `Unavailable`) print as `Error: <message>` and exit 1."""

    group_class = type  # `@group.group()` makes a CommandGroup too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SymphonyError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(1)
        except click.NoSuchOption as exc:
            if exc.option_name in GLOBAL_OPTIONS and ctx.parent is None:
                hint = (
                    f"{exc.message} ({exc.option_name} is a global option: it goes before "
                    f"the command, e.g. symphonyd {exc.option_name} VALUE "
                    f"{ctx.invoked_subcommand or 'status'})"
                )
                raise click.UsageError(hint, exc.ctx) from None
            raise


GLOBAL_OPTIONS = (
    "--socket-path",
    "--data-dir",
    "--addr",
    "--manager-addr",
    "--token",
    "--fingerprint",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
