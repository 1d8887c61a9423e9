"""`symphonyd instance ...` (virtual machines on the compute service) and `symphonyd
volume attach|detach`."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from symphonyd.cli.block import volume
from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import (
    human_size,
    print_json,
    print_kv_table,
    print_table,
    progress_bar,
    resource_path,
)
from symphonyd.cli.wait import follow_record
from symphonyd.client import Client
from symphonyd.errors import DriverError, Invalid

INSTANCE_FIELDS = [
    "id",
    "name",
    "status",
    "status_message",
    "node",
    "cpus",
    "memory",
    "disk",
    "image_id",
    "root_volume_id",
    "volumes",
    "network",
    "power",
    "created_at",
]
WAIT_LIMIT = 1800.0
FOLLOW_EVERY = 0.5  # console-log --follow: seconds between reads
FOLLOW_LIMIT = 24 * 3600.0  # ... and for how long at most
MAX_FILE = 64 * 1024  # user-data and key files are small


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise Invalid(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise Invalid(f"{what} {path} is larger than 64 KiB")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise Invalid(f"{what} {path} is not UTF-8 text") from None


def wait_instance(
    client: Client, record: dict[str, Any], wanted: tuple[str, ...], *, gone_ok: bool = False
) -> dict[str, Any] | None:
    """Follow an instance until its status is one of `wanted` (or it is gone, for rm);
    a failure, or a change that failed, ends the wait with its reason."""
    with progress_bar(sys.stderr.isatty()) as bar:
        task = bar.add_task("waiting", total=None)

        def done(current: dict[str, Any]) -> bool:
            if current["status"] == "failed":
                raise DriverError(f"instance {current['name']} failed: {current['status_message']}")
            error = current.get("last_error")
            if error:
                raise DriverError(
                    f"instance {current['name']}: {error['action']} failed: {error['message']}"
                )
            if current["status"] in wanted:
                return True
            bar.update(task, description=current["status"])
            return False

        return follow_record(
            client,
            "instances",
            resource_path("instances", record["id"]),
            record,
            done,
            timeout=WAIT_LIMIT,
            expired=lambda last: DriverError(
                f"instance {last['name']} is still {last['status']} after {WAIT_LIMIT:.0f} s"
            ),
            gone_ok=gone_ok,
        )


def show_instance(record: dict[str, Any] | None, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        print_json(record)
        return
    pairs = []
    for key in INSTANCE_FIELDS:
        value = record.get(key)
        if key in ("memory", "disk"):
            value = human_size(value)
        pairs.append((key, value))
    if record.get("last_error"):
        pairs.append(("last_error", record["last_error"]["message"]))
    for note in record.get("at_next_start") or []:
        pairs.append(("at next start", note))
    print_kv_table(pairs)


@click.group(cls=CommandGroup)
def instance() -> None:
    """Virtual machine instances (compute service)."""


@instance.command("create")
@click.argument("name")
@click.option("--image", required=True, help="Image to boot (id, name or id prefix).")
@click.option("--cpus", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--memory", default="1G", show_default=True, help="Memory, e.g. 512M, 2G.")
@click.option("--disk", default="10G", show_default=True, help="Root disk size.")
@click.option("--node", help="Run on this node (refused, with the reason, if it cannot).")
@click.option("--network", default="user", show_default=True, help="user or bridge=NAME.")
@click.option("--user-data", "user_data_file", metavar="FILE", help="cloud-init user-data.")
@click.option("--network-config", "network_file", metavar="FILE", help="network-config v2.")
@click.option(
    "--ssh-key", "key_files", multiple=True, metavar="FILE", help="Public key(s) to install."
)
@click.option(
    "--volume", "data_volumes", multiple=True, metavar="VOLUME", help="Data volume(s) to attach."
)
@click.option("--no-start", is_flag=True, help="Define it, but do not start it.")
@click.option("--no-wait", is_flag=True, help="Return once recorded.")
@json_option
@click.pass_obj
def instance_create(
    obj: Context,
    name: str,
    image: str,
    cpus: int,
    memory: str,
    disk: str,
    node: str | None,
    network: str,
    user_data_file: str | None,
    network_file: str | None,
    key_files: tuple[str, ...],
    data_volumes: tuple[str, ...],
    no_start: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Create an instance from an image and start it; waits until it runs."""
    body: dict[str, Any] = {
        "name": name,
        "image": image,
        "cpus": cpus,
        "memory": memory,
        "disk": disk,
        "network": network,
        "start": not no_start,
    }
    if node:
        body["node"] = node
    if user_data_file:
        body["user_data"] = _read_text(user_data_file, "user-data file")
    if network_file:
        body["network_config"] = _read_text(network_file, "network-config file")
    if key_files:
        body["ssh_keys"] = [_read_text(path, "SSH key file") for path in key_files]
    if data_volumes:
        body["volumes"] = list(data_volumes)
    client = obj.client()
    record = client.request("POST", "/v1/instances", body=body)
    if not no_wait:
        waited = wait_instance(client, record, ("stopped",) if no_start else ("running",))
        record = waited or record
    show_instance(record, as_json)


@instance.command("list")
@json_option
@click.pass_obj
def instance_list(obj: Context, as_json: bool) -> None:
    """Instances with their status and node."""
    result = obj.client().request("GET", "/v1/instances")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "NAME", "STATUS", "NODE", "CPUS", "MEMORY", "DISK", "NETWORK"],
        [
            [
                r["id"][:12],
                r["name"],
                r["status"],
                r["node"] or "-",
                r["cpus"],
                human_size(r["memory"]),
                human_size(r["disk"]),
                r["network"],
            ]
            for r in result["instances"]
        ],
    )


@instance.command("show")
@click.argument("ref", metavar="INSTANCE")
@json_option
@click.pass_obj
def instance_show(obj: Context, ref: str, as_json: bool) -> None:
    """One instance."""
    show_instance(obj.client().request("GET", resource_path("instances", ref)), as_json)


def _power(
    obj: Context,
    ref: str,
    verb: str,
    wanted: tuple[str, ...],
    no_wait: bool,
    as_json: bool,
    body: dict[str, Any] | None = None,
) -> None:
    client = obj.client()
    path = resource_path("instances", ref)
    record = client.request("POST", f"{path}/{verb}", body=body or {})
    if not no_wait:
        record = wait_instance(client, record, wanted) or record
    if as_json:
        print_json(record)
    else:
        click.echo(f"Instance {record['name']} is {record['status']}.")


@instance.command("start")
@click.argument("ref", metavar="INSTANCE")
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@json_option
@click.pass_obj
def instance_start(obj: Context, ref: str, no_wait: bool, as_json: bool) -> None:
    """Start a stopped instance; waits until it runs."""
    _power(obj, ref, "start", ("running",), no_wait, as_json)


@instance.command("stop")
@click.argument("ref", metavar="INSTANCE")
@click.option("--force", is_flag=True, help="Power off at once (no ACPI shutdown).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 3600),
    default=60.0,
    show_default=True,
    help="Seconds the guest has to power off before it is forced off.",
)
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@json_option
@click.pass_obj
def instance_stop(
    obj: Context, ref: str, force: bool, timeout: float, no_wait: bool, as_json: bool
) -> None:
    """Stop an instance: an ACPI power-off, forced after --timeout; waits until stopped."""
    body = {"force": force, "timeout": timeout}
    _power(obj, ref, "stop", ("stopped",), no_wait, as_json, body)


@instance.command("restart")
@click.argument("ref", metavar="INSTANCE")
@json_option
@click.pass_obj
def instance_restart(obj: Context, ref: str, as_json: bool) -> None:
    """Reboot a running instance."""
    _power(obj, ref, "restart", ("running",), True, as_json)


def wait_applied(client: Client, record: dict[str, Any], done: Any) -> dict[str, Any]:
    """Follow an instance until `done(record)` (a change its node applied)."""

    def finished(current: dict[str, Any]) -> bool:
        error = current.get("last_error")
        if error:
            raise DriverError(
                f"instance {current['name']}: {error['action']} failed: {error['message']}"
            )
        return bool(done(current))

    return (
        follow_record(
            client,
            "instances",
            resource_path("instances", record["id"]),
            record,
            finished,
            timeout=WAIT_LIMIT,
            expired=lambda last: DriverError(f"instance {last['name']}: not applied yet"),
        )
        or record
    )


def _said(record: dict[str, Any], prefix: str | tuple[str, ...]) -> str:
    later = [n for n in record.get("at_next_start") or [] if n.startswith(prefix)]
    return f" ({'; '.join(later)})" if later else " (live)" if record["status"] == "running" else ""


@instance.command("resize")
@click.argument("ref", metavar="INSTANCE")
@click.option("--cpus", type=click.IntRange(1, 256), help="vCPUs.")
@click.option("--memory", help="Memory, e.g. 2G.")
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@json_option
@click.pass_obj
def instance_resize(
    obj: Context, ref: str, cpus: int | None, memory: str | None, no_wait: bool, as_json: bool
) -> None:
    """Change vCPUs and/or memory: live where the hypervisor can, else at the next start
    (it says which)."""
    if cpus is None and memory is None:
        raise click.UsageError("give --cpus, --memory or both")
    client = obj.client()
    body = {k: v for k, v in (("cpus", cpus), ("memory", memory)) if v is not None}
    record = client.request("POST", f"{resource_path('instances', ref)}/resize", body=body)
    if not no_wait and record["node"]:
        record = wait_applied(
            client,
            record,
            lambda r: (
                (r.get("applied") or {}).get("cpus") == r["cpus"]
                and (r.get("applied") or {}).get("memory") == r["memory"]
            ),
        )
    if as_json:
        print_json(record)
    else:
        click.echo(
            f"Instance {record['name']}: {record['cpus']} vCPUs, "
            f"{human_size(record['memory'])}{_said(record, ('cpus', 'memory'))}."
        )


@volume.command("attach")
@click.argument("volume_ref", metavar="VOLUME")
@click.argument("instance_ref", metavar="INSTANCE")
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@json_option
@click.pass_obj
def volume_attach(
    obj: Context, volume_ref: str, instance_ref: str, no_wait: bool, as_json: bool
) -> None:
    """Attach a data volume to an instance on the same node: hot-plugged where the
    hypervisor can, else at the instance's next start (it says which)."""
    client = obj.client()
    path = resource_path("volumes", volume_ref)
    record = client.request("POST", f"{path}/attach", body={"instance": instance_ref})
    wanted = record["volumes"][-1]
    if not no_wait and record["node"]:
        record = wait_applied(
            client, record, lambda r: wanted in ((r.get("applied") or {}).get("volumes") or {})
        )
    if as_json:
        print_json(record)
    else:
        click.echo(f"Attached {volume_ref} to {record['name']}{_said(record, 'volume')}.")


@volume.command("detach")
@click.argument("volume_ref", metavar="VOLUME")
@click.argument("instance_ref", metavar="[INSTANCE]", required=False)
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@json_option
@click.pass_obj
def volume_detach(
    obj: Context, volume_ref: str, instance_ref: str | None, no_wait: bool, as_json: bool
) -> None:
    """Detach a data volume from its instance: hot-unplugged where the hypervisor can,
    else when the instance next stops (it says which)."""
    client = obj.client()
    volume_id = client.request("GET", resource_path("volumes", volume_ref))["id"]
    body = {"instance": instance_ref} if instance_ref else {}
    record = client.request("POST", f"{resource_path('volumes', volume_ref)}/detach", body=body)

    def done(r: dict[str, Any]) -> bool:
        held = (r.get("applied") or {}).get("volumes") or {}
        deferred = any(volume_id[:12] in n for n in r.get("at_next_start") or [])
        return volume_id not in held or deferred

    if not no_wait and record["node"]:
        record = wait_applied(client, record, done)
    if as_json:
        print_json(record)
    else:
        click.echo(f"Detached {volume_ref} from {record['name']}{_said(record, 'volume')}.")


def _moved(client: Client, record: dict[str, Any]) -> dict[str, Any]:
    """Follow a moving instance until its move finished (or was given up)."""

    def done(current: dict[str, Any]) -> bool:
        error = current.get("last_error")
        if error and error["action"] == "move":
            raise DriverError(f"instance {current['name']} did not move: {error['message']}")
        if current["status"] == "failed":
            raise DriverError(f"instance {current['name']} failed: {current['status_message']}")
        return not current.get("move")

    return (
        follow_record(
            client,
            "instances",
            resource_path("instances", record["id"]),
            record,
            done,
            timeout=WAIT_LIMIT,
            expired=lambda last: DriverError(f"instance {last['name']} is still moving"),
        )
        or record
    )


@instance.command("move")
@click.argument("ref", metavar="INSTANCE")
@click.option("--node", help="Target node (default: the best other node).")
@click.option("--no-wait", is_flag=True, help="Return once the move has begun.")
@json_option
@click.pass_obj
def instance_move(obj: Context, ref: str, node: str | None, no_wait: bool, as_json: bool) -> None:
    """Move an instance to another node, cold: stopped, its volumes copied and verified,
    started there if it ran; the source copies are removed once it runs there."""
    client = obj.client()
    body = {"node": node} if node else {}
    record = client.request("POST", f"{resource_path('instances', ref)}/move", body=body)
    target = record["move"]["node"]
    if not no_wait:
        record = _moved(client, record)
    if as_json:
        print_json(record)
    elif no_wait:
        click.echo(f"Moving instance {record['name']} to node {target}.")
    else:
        click.echo(f"Instance {record['name']} is {record['status']} on node {record['node']}.")


@click.command("evacuate")
@click.argument("name")
@click.option("--stop-only", is_flag=True, help="Only stop its instances (do not move them).")
@click.option("--no-wait", is_flag=True, help="Return once the moves have begun.")
@json_option
@click.pass_obj
def node_evacuate(obj: Context, name: str, stop_only: bool, no_wait: bool, as_json: bool) -> None:
    """Cordon a node (nothing new is placed there) and move each of its instances to
    another node (running ones are stopped first and started there), or only stop them."""
    client = obj.client()
    result = client.request("POST", f"/v1/nodes/{name}/evacuate", body={"stop_only": stop_only})
    if not no_wait:
        for moving in result["moving"]:
            _moved(client, client.request("GET", resource_path("instances", moving)))
        for stopping in result["stopped"]:
            wait_instance(
                client, client.request("GET", resource_path("instances", stopping)), ("stopped",)
            )
    if as_json:
        print_json(result)
    else:
        click.echo(f"Node {name} is cordoned: nothing new is placed there.")
        for moved in result["moving"]:
            click.echo(f"  {moved}: {'moving' if no_wait else 'moved'}")
        for stopped in result["stopped"]:
            click.echo(f"  {stopped}: stopped")
        for problem in result["cannot"]:
            click.echo(f"  {problem['name']}: {problem['reason']}")
    if result["cannot"]:
        sys.exit(1)


@click.command("restore")
@click.argument("name")
@click.pass_obj
def node_restore(obj: Context, name: str) -> None:
    """Uncordon a node: new work may be placed there again (nothing moves back)."""
    obj.client().request("POST", f"/v1/nodes/{name}/restore", body={})
    click.echo(f"Node {name} takes new work again.")


@instance.command("rm")
@click.argument("ref", metavar="INSTANCE")
@click.option("--keep-volumes", is_flag=True, help="Keep attached data volumes (detached).")
@click.option("--no-wait", is_flag=True, help="Return once asked.")
@click.pass_obj
def instance_rm(obj: Context, ref: str, keep_volumes: bool, no_wait: bool) -> None:
    """Remove an instance with its domain, seed and root volume."""
    client = obj.client()
    path = resource_path("instances", ref)
    query = "?keep_volumes=true" if keep_volumes else ""
    result = client.request("DELETE", f"{path}{query}")
    if "deleted" not in result and no_wait:
        click.echo(f"Removing instance {result['name']}.")
        return
    if "deleted" not in result:
        wait_instance(client, result, (), gone_ok=True)
    click.echo(f"Removed instance {result['name']}.")


@instance.command("console-log")
@click.argument("ref", metavar="INSTANCE")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the console writes.")
@click.pass_obj
def instance_console_log(obj: Context, ref: str, follow: bool) -> None:
    """The instance's serial console output (read on its node)."""
    client = obj.client()
    path = resource_path("instances", ref)
    offset = 0
    deadline = time.monotonic() + FOLLOW_LIMIT
    while True:
        answer = client.request("GET", f"{path}/console?offset={offset}")
        if answer["text"]:
            sys.stdout.write(answer["text"])
            sys.stdout.flush()
        more = answer["offset"] < answer["size"]
        offset = answer["offset"]
        if more:
            continue
        if not follow or time.monotonic() >= deadline:
            return
        time.sleep(FOLLOW_EVERY)
