"""The `symphonyd` command: one click group, one short function per command.

Commands talk only to the HTTP API through `symphonyd.client` (and `run` starts the
daemon). Global options come before the command: `symphonyd --data-dir ./n2 join TOKEN`.
Errors print one line on stderr and exit 1 (mapped once, by `CommandGroup`, which every
group is); read commands take `--json`. The other groups live in one module each.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from symphonyd import __version__
from symphonyd.cli import block as _block
from symphonyd.cli import images as _images
from symphonyd.cli import instances as _instances
from symphonyd.cli import kv as _kv
from symphonyd.cli import lifecycles as _lifecycles
from symphonyd.cli import lvm as _lvm
from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import print_json, print_kv_table, print_table, resource_path

DEFAULT_DATA_DIR = "/var/lib/symphonyd"


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="symphonyd")
@click.option(
    "--socket-path",
    envvar="SYMPHONYD_SOCKET",
    help="Local control socket (default: <data-dir>/control.sock).",
)
@click.option(
    "--data-dir",
    envvar="SYMPHONYD_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Node data directory.",
)
@click.option(
    "--addr",
    envvar="SYMPHONYD_ADDR",
    help="Talk to a node's HTTPS API (https://HOST:PORT) instead of the socket.",
)
@click.option("--manager-addr", help="Alias of --addr as HOST:PORT (the original CLI's flag).")
@click.option("--token", envvar="SYMPHONYD_TOKEN", help="API token for --addr.")
@click.option(
    "--fingerprint",
    envvar="SYMPHONYD_FINGERPRINT",
    help="SHA-256 of the cluster certificate (default: read from --data-dir).",
)
@click.pass_context
def main(
    ctx: click.Context,
    socket_path: str | None,
    data_dir: str,
    addr: str | None,
    manager_addr: str | None,
    token: str | None,
    fingerprint: str | None,
) -> None:
    """symphonyd: the cloud node daemon and its command line."""
    ctx.obj = Context(socket_path, data_dir, addr or manager_addr, token, fingerprint)
    # `run` lets a settings file choose the data dir unless a flag or the environment did.
    source = ctx.get_parameter_source("data_dir")
    ctx.obj.explicit_data_dir = None if source == ParameterSource.DEFAULT else data_dir
    given = ctx.get_parameter_source("token") == ParameterSource.COMMANDLINE
    if token and given and not (addr or manager_addr):
        click.echo(
            "Note: --token is for --addr; the local control socket needs none (ignored)",
            err=True,
        )


@main.command()
@click.option("--data-dir", "run_data_dir", help="Node data directory (same as the global option).")
@click.option("--name", help="Node name (default: the host name).")
@click.option("--address", help="Address peers use to reach this node.")
@click.option("--bind", help="Listen address (default: --address).")
@click.option("--api-port", type=int, help="HTTPS API port [15760].")
@click.option("--raft-port", type=int, help="Raft port [15761].")
@click.option("--config", "config_file", help="Settings file [/etc/symphonyd/symphonyd.toml].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or as JSON objects [text].",
)
@click.pass_obj
def run(
    obj: Context,
    run_data_dir: str | None,
    name: str | None,
    address: str | None,
    bind: str | None,
    api_port: int | None,
    raft_port: int | None,
    config_file: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the daemon in the foreground (systemd's ExecStart)."""
    from symphonyd.daemon import run_daemon

    overrides = {
        "name": name,
        "address": address,
        "bind": bind,
        "api_port": api_port,
        "raft_port": raft_port,
        "log_level": log_level,
        "log_format": log_format,
        "data_dir": run_data_dir or obj.explicit_data_dir,
    }
    sys.exit(run_daemon(config_file, overrides))


@main.command()
@click.option(
    "--token-expires",
    metavar="DURATION",
    help="Lifetime of the first admin token, e.g. 30d (default: it never expires).",
)
@json_option
@click.pass_obj
def init(obj: Context, token_expires: str | None, as_json: bool) -> None:
    """Bootstrap a new one-node cluster on this node (over the local socket)."""
    body = {"token_expires": token_expires} if token_expires else {}
    result = obj.client(local_only=True).request("POST", "/v1/cluster/init", body=body)
    if as_json:
        print_json(result)
        return
    click.echo(f"Initialised cluster {result['cluster_id']} on node {result['node']}.")
    click.echo(f"API: {result['api']}  certificate fingerprint: {result['fingerprint']}")
    expiry = result.get("admin_token_expires_at") or "never"
    click.echo(f"Admin token (expires {expiry}; shown only now, keep it safe):")
    click.echo(result["admin_token"])


@main.command()
@click.argument("token")
@json_option
@click.pass_obj
def join(obj: Context, token: str, as_json: bool) -> None:
    """Make this node join a cluster with a join TOKEN (over the local socket)."""
    result = obj.client(local_only=True, timeout=120).request(
        "POST", "/v1/cluster/join", body={"token": token}
    )
    if as_json:
        print_json(result)
        return
    click.echo(
        f"Joined cluster {result['cluster_id']} as {result['node']} "
        f"({len(result['members'])} members)."
    )
    if not result.get("caught_up"):
        click.echo("Warning: not caught up with the cluster yet; see `symphonyd status`.")


@main.group()
def token() -> None:
    """Join and admin tokens."""


@token.command("create")
@click.option("--expires", default=None, help="Lifetime, e.g. 30m, 3h, 7d [3h for join].")
@click.option("--admin", is_flag=True, help="Create an admin API token instead of a join token.")
@click.option(
    "--scope",
    type=click.Choice(["reader", "operator", "admin"]),
    help="Create an API token with these rights: reader (GETs), operator (also changes "
    "resources), admin (also tokens, membership, settings).",
)
@click.option("--description", default="", help="What the token is for.")
@json_option
@click.pass_obj
def token_create(
    obj: Context,
    expires: str | None,
    admin: bool,
    scope: str | None,
    description: str,
    as_json: bool,
) -> None:
    """Create a single-use, expiring join token (printed as the last line), or an API
    token (--admin, --scope)."""
    api_token = admin or scope is not None
    body: dict[str, Any] = {"kind": "admin" if api_token else "join", "description": description}
    if scope is not None:
        body["scope"] = scope
    if expires:
        body["expires"] = expires
    result = obj.client().request("POST", "/v1/tokens", body=body)
    if as_json:
        print_json(result)
        return
    expiry = result["expires_at"] or "never"
    what = f"API token ({result['scope']})" if result.get("scope") else "Join token"
    click.echo(f"{what} {result['id']} (expires {expiry}):")
    click.echo(result["token"])


@token.command("list")
@json_option
@click.pass_obj
def token_list(obj: Context, as_json: bool) -> None:
    """API and join tokens (never their secrets)."""
    result = obj.client().request("GET", "/v1/tokens")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "KIND", "SCOPE", "CREATED", "EXPIRES", "USED BY", "DESCRIPTION"],
        [
            [
                t["id"],
                t["kind"],
                t.get("scope"),
                t["created_at"],
                ("expired " if t["expired"] else "") + (t["expires_at"] or "never"),
                t["used_by"],
                t["description"] or None,
            ]
            for t in result["tokens"]
        ],
    )


@token.command("show")
@click.argument("ref", metavar="TOKEN_ID")
@json_option
@click.pass_obj
def token_show(obj: Context, ref: str, as_json: bool) -> None:
    """One token (by id or id prefix; the part of a token before the dot)."""
    record = obj.client().request("GET", resource_path("tokens", ref))
    if as_json:
        print_json(record)
    else:
        print_kv_table(list(record.items()))


@token.command("revoke")
@click.argument("ref", metavar="TOKEN_ID")
@click.pass_obj
def token_revoke(obj: Context, ref: str) -> None:
    """Revoke a token: every node refuses it at once."""
    result = obj.client().request("DELETE", resource_path("tokens", ref))
    click.echo(f"Revoked {result['kind']} token {result['revoked']}.")


@main.command()
@click.option("--yes", is_flag=True, help="Go on without asking (for scripts).")
@json_option
@click.pass_obj
def recover(obj: Context, yes: bool, as_json: bool) -> None:
    """Make this STOPPED node the only member of its cluster, from its own data, after
    the cluster lost its majority for good (docs/operations.md)."""
    from symphonyd.errors import Conflict
    from symphonyd.recovery import plan_recovery, stopped_daemon

    with stopped_daemon(obj.data_dir):
        plan = plan_recovery(obj.data_dir)
        facts = plan.describe()
        if not as_json or not yes:
            click.echo(
                f"Recovering cluster {plan.cluster_id} on node {plan.name} ({plan.raft_addr}).\n"
                f"  Raft members now: {', '.join(plan.members)}\n"
                f"  After: {plan.name} alone; node records removed: "
                f"{', '.join(plan.removed_nodes) or 'none'}\n"
                f"  Its log ends at entry {plan.last_index} (it knew entries up to "
                f"{plan.commit_index} committed; the rest become committed), "
                f"{plan.keys} KV keys.\n"
                "WARNING: writes the other nodes committed that this node never received "
                "are lost for good, and the removed nodes must never be started again with "
                "their old data dirs.",
                err=as_json,
            )
        if not yes:
            if not sys.stdin.isatty():
                raise Conflict("recover rewrites this node's Raft data: confirm with --yes")
            typed = click.prompt(f"Type the node's name ({plan.name}) to go on", err=as_json)
            if typed.strip() != plan.name:
                raise Conflict("not confirmed: nothing was changed")
        backup = plan.apply()
    if as_json:
        print_json({**facts, "recovered": True, "backup": backup})
        return
    click.echo(f"Recovered: {plan.name} is the only member. The old Raft data is in {backup}.")
    click.echo(
        "Next: start symphonyd on this node, check `symphonyd status`, add nodes with "
        "`symphonyd token create` and `symphonyd join`, then run "
        "`symphonyd cluster rotate-secret` (the lost nodes still hold the old secret)."
    )


@main.command()
@json_option
@click.pass_obj
def leave(obj: Context, as_json: bool) -> None:
    """This node leaves its cluster cleanly (over the local socket)."""
    result = obj.client(local_only=True, timeout=120).request("POST", "/v1/cluster/leave")
    if as_json:
        print_json(result)
        return
    click.echo(f"Node {result['node']} left cluster {result['left']}.")


@main.command()
@json_option
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Cluster, this node, the leader, members and quorum."""
    result = obj.client(timeout=10).request("GET", "/v1/cluster")
    if as_json:
        print_json(result)
        return
    if not result["initialized"]:
        click.echo(
            f"Node {result['node']} (symphonyd {result['version']}) is not part of a "
            "cluster: run `symphonyd init` or `symphonyd join TOKEN`."
        )
        return
    quorum = "yes" if result["has_quorum"] else "NO QUORUM (writes cannot commit)"
    print_kv_table(
        [
            ("Cluster", result["cluster_id"]),
            ("This node", f"{result['node']} ({result['role']})"),
            ("Leader", result["leader"] or "none"),
            ("Quorum", quorum),
            ("Raft term", result["term"]),
            ("Commit index", result["commit_index"]),
            ("Revision", result["revision"]),
            ("Fingerprint", result.get("fingerprint")),
            ("Image copier", _copier_line(result.get("image_copier") or {})),
            ("Version", result["version"]),
        ]
    )
    _print_members(result["members"])
    versions: dict[str, list[str]] = {}
    for member in result["members"]:
        versions.setdefault(member.get("version") or "?", []).append(member["name"])
    if len(versions) > 1:
        running = "; ".join(f"{v} on {', '.join(names)}" for v, names in sorted(versions.items()))
        click.echo(
            f"Warning: members run different symphonyd versions ({running}): "
            "finish the rolling upgrade (docs/upgrades.md).",
            err=True,
        )


def _copier_line(info: dict[str, Any]) -> str:
    if info.get("implementation") == "native":
        return f"native ({info.get('sha256')})"
    return f"pure Python fallback ({info.get('reason') or 'native module not loaded'})"


def _print_members(members: list[dict[str, Any]]) -> None:
    print_table(
        ["NAME", "ROLE", "HEALTH", "STATUS", "RAFT", "API", "VERSION"],
        [
            [
                m["name"],
                m["role"],
                m["health"],
                m["status"] + (" (cordoned)" if m.get("cordoned") else ""),
                m["raft_addr"],
                m["api"] or "-",
                m.get("version") or "-",
            ]
            for m in members
        ],
    )


@main.group()
def node() -> None:
    """Members of the cluster."""


@node.command("list")
@json_option
@click.pass_obj
def node_list(obj: Context, as_json: bool) -> None:
    """List members with role, health and status."""
    result = obj.client().request("GET", "/v1/nodes")
    if as_json:
        print_json(result)
        return
    _print_members(result["nodes"])


@node.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def node_show(obj: Context, name: str, as_json: bool) -> None:
    """Show one member."""
    result = obj.client().request("GET", f"/v1/nodes/{name}")
    if as_json:
        print_json(result)
        return
    print_kv_table(list(result.items()))


@node.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even if the node is reachable.")
@json_option
@click.pass_obj
def node_remove(obj: Context, name: str, force: bool, as_json: bool) -> None:
    """Remove a dead member from the cluster."""
    result = obj.client().request(
        "DELETE", f"/v1/nodes/{name}", query={"force": "true" if force else None}
    )
    if as_json:
        print_json(result)
        return
    click.echo(f"Removed node {result['removed']}.")
    click.echo(
        "Its data dir still holds the cluster secret: run `symphonyd cluster rotate-secret` "
        "if the host is not trusted any more."
    )


@main.group("config")
def config_group() -> None:
    """Cluster-wide settings: images.min_replicas, images.failed_keep,
    deployments.step_patience, compute.cpu_overcommit, compute.memory_overcommit
    (docs/configuration.md)."""


@config_group.command("get")
@click.argument("key", required=False)
@json_option
@click.pass_obj
def config_get(obj: Context, key: str | None, as_json: bool) -> None:
    """Show the settings (or one)."""
    settings = obj.client().request("GET", "/v1/cluster/config")["config"]
    if key is not None:
        if key not in settings:
            raise click.ClickException(f"unknown setting {key!r}")
        settings = {key: settings[key]}
    if as_json:
        print_json(settings)
    else:
        print_kv_table(sorted(settings.items()))


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def config_set(obj: Context, key: str, value: str) -> None:
    """Change a setting for the whole cluster."""
    result = obj.client().request("PUT", f"/v1/cluster/config/{key}", body={"value": value})
    click.echo(f"{key} = {result['config'][key]}")
    if result.get("note"):
        click.echo(f"Note: {result['note']}", err=True)


@main.group("cluster")
def cluster_group() -> None:
    """The cluster's own keys."""


@cluster_group.command("rotate-secret")
@json_option
@click.pass_obj
def cluster_rotate_secret(obj: Context, as_json: bool) -> None:
    """Give the cluster a new secret (the Raft port's key and the key of sealed values),
    rolled out to every member without losing quorum; a node that left, or a copy of an
    old data dir, can no longer take part. Every member must be up."""
    result = obj.client(timeout=120).request("POST", "/v1/cluster/rotate-secret")
    if as_json:
        print_json(result)
        return
    click.echo(
        f"Rotated the cluster secret on {len(result['members'])} members "
        f"({', '.join(result['members'])})."
    )


@cluster_group.command("rotate-certificate")
@json_option
@click.pass_obj
def cluster_rotate_certificate(obj: Context, as_json: bool) -> None:
    """Give the cluster a new TLS certificate and key, rolled out to every member with no
    failed call between them; the old one is no longer accepted by members. Clients that
    pass --fingerprint and join tokens made before need the new fingerprint (printed).
    Every member must be up."""
    result = obj.client(timeout=120).request("POST", "/v1/cluster/rotate-certificate")
    if as_json:
        print_json(result)
        return
    click.echo(
        f"Rotated the cluster certificate on {len(result['members'])} members "
        f"({', '.join(result['members'])})."
    )
    click.echo(f"New certificate fingerprint: {result['fingerprint']}")
    click.echo(
        "Join tokens made before no longer work (make new ones); remote clients need "
        "--fingerprint with the new value.",
        err=True,
    )


node.add_command(_instances.node_evacuate)
node.add_command(_instances.node_restore)

for _command in (
    _block.service,
    _block.volume,
    _images.image,
    _instances.instance,
    _kv.kv,
    _lvm.block,
    _lifecycles.lifecycle,
    _lifecycles.deploy,
    _lifecycles.deployment,
):
    main.add_command(_command)
