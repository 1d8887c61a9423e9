"""`symphonyd kv get|put|delete|list`: the replicated key-value store, through its Consul
compatible API."""

from __future__ import annotations

import base64
import json
import sys
import urllib.parse

import click

from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import print_json, print_table
from symphonyd.errors import NotFound


def kv_path(key: str) -> str:
    """The API path of a key: characters like '%', '?', '#' or spaces stay in the key."""
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


@click.group(cls=CommandGroup)
def kv() -> None:
    """The replicated key-value store (Consul compatible API)."""


@kv.command("get")
@click.argument("key")
@json_option
@click.pass_obj
def kv_get(obj: Context, key: str, as_json: bool) -> None:
    """Print a key's value: its bytes as they are when piped, a newline after it on a
    terminal."""
    client = obj.client()
    try:
        if as_json:
            print_json(client.request("GET", kv_path(key)))
            return
        value = client.request("GET", kv_path(key), query={"raw": "true"})
    except NotFound:
        raise NotFound(f"no key {key!r}") from None
    sys.stdout.buffer.write(value if isinstance(value, bytes) else json.dumps(value).encode())
    if sys.stdout.isatty():
        sys.stdout.write("\n")


@kv.command("put")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the value from a file ('-' for stdin is the VALUE '-').",
)
@click.option("--cas", type=int, help="Only if the key's ModifyIndex is this (0: if absent).")
@click.option("--flags", type=int, help="Opaque 64-bit flags.")
@click.pass_obj
def kv_put(
    obj: Context, key: str, value: str | None, path: str | None, cas: int | None, flags: int | None
) -> None:
    """Set KEY to VALUE (or the content of --file, or stdin with VALUE '-')."""
    if path:
        with open(path, "rb") as f:
            data = f.read()
    elif value == "-" or value is None:
        data = sys.stdin.buffer.read()
    else:
        data = value.encode()
    ok = obj.client().request("PUT", kv_path(key), raw=data, query={"cas": cas, "flags": flags})
    if not ok:
        raise click.ClickException(f"not written: {key} changed since ModifyIndex {cas}")
    click.echo(f"Wrote {key}.")


@kv.command("delete")
@click.argument("key")
@click.option("--recurse", is_flag=True, help="Delete every key under the prefix.")
@click.option("--cas", type=int, help="Only if the key's ModifyIndex is this.")
@click.pass_obj
def kv_delete(obj: Context, key: str, recurse: bool, cas: int | None) -> None:
    """Delete a key (or a prefix with --recurse)."""
    ok = obj.client().request(
        "DELETE", kv_path(key), query={"recurse": "true" if recurse else None, "cas": cas}
    )
    if not ok:
        raise click.ClickException(f"not deleted: {key} changed since ModifyIndex {cas}")
    click.echo(f"Deleted {key}{' (recursively)' if recurse else ''}.")


@kv.command("list")
@click.argument("prefix", default="")
@json_option
@click.pass_obj
def kv_list(obj: Context, prefix: str, as_json: bool) -> None:
    """List keys under PREFIX with their indexes and sizes."""
    try:
        entries = obj.client().request("GET", kv_path(prefix), query={"recurse": "true"})
    except NotFound:
        entries = []
    if as_json:
        print_json(entries)
        return
    print_table(
        ["KEY", "SIZE", "FLAGS", "CREATE", "MODIFY"],
        [
            [
                e["Key"],
                len(base64.b64decode(e["Value"] or "")),
                e["Flags"],
                e["CreateIndex"],
                e["ModifyIndex"],
            ]
            for e in entries
        ],
    )
