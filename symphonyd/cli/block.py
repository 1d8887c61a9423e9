"""`symphonyd service ...` and `symphonyd volume ...`."""

from __future__ import annotations

import sys
from typing import Any

import click

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
from symphonyd.errors import DriverError

VOLUME_FIELDS = [
    "id",
    "name",
    "status",
    "status_message",
    "node",
    "pool",
    "size",
    "actual_size",
    "format",
    "allocated",
    "image_id",
    "snapshots",
    "created_at",
]
WAIT_LIMIT = 1800.0
PROGRESS_REFRESH = 1.0  # seconds between re-reads of a bar's progress (not in the log)


def failed_change(record: dict[str, Any]) -> str | None:
    """What the record's last change did not do, as the user reads it, or None (it has no
    `last_error`). Every change request clears `last_error` in the patch that records it,
    so one present while waiting for a request was set after it, by the work it asked for
    (or work still failing that stands before it): the wait ends with it. Log order, not
    clocks, tells them apart."""
    error = record.get("last_error")
    if not error:
        return None
    verdict = "not removed" if error["action"] == "remove" else "last change failed"
    return f"{verdict}: {error['message']}"


def wait_volume(
    client: Client, record: dict[str, Any], *, gone_ok: bool = False
) -> dict[str, Any] | None:
    """Follow a volume until its work is done: ready or failed (or gone, for rm). On a
    terminal, the image work (fetch from another node, copy into the volume) shows as a
    progress bar."""
    with progress_bar(sys.stderr.isatty()) as bar:
        task = bar.add_task("waiting", total=None)

        def done(record: dict[str, Any]) -> bool:
            if record["status"] == "failed":
                raise DriverError(f"volume {record['name']} failed: {record['status_message']}")
            failure = failed_change(record)
            if failure is not None:
                raise DriverError(f"volume {record['name']}: {failure}")
            busy = (
                record["status"] in ("pending", "creating", "deleting")
                or set(record["snapshots"]) - set(record["snapshots_done"])
                or (
                    record["status"] == "ready"
                    and (record.get("actual_size") or 0) < record["size"]
                )
            )
            if not busy:
                return True
            work = record.get("progress") or {}
            if work.get("stage"):
                bar.update(
                    task,
                    description=work["stage"],
                    completed=work["done"],
                    total=work["total"] or None,
                )
            else:
                bar.update(task, description=record["status"])
            return False

        return follow_record(
            client,
            "volumes",
            resource_path("volumes", record["id"]),
            record,
            done,
            timeout=WAIT_LIMIT,
            expired=lambda record: DriverError(
                f"volume {record['name']} is still {record['status']} after {WAIT_LIMIT:.0f} s"
            ),
            gone_ok=gone_ok,
            refresh=PROGRESS_REFRESH if sys.stderr.isatty() else None,
        )


def show_volume(record: dict[str, Any] | None, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        print_json(record)
    else:
        print_kv_table([(k, record.get(k)) for k in VOLUME_FIELDS])


@click.group(cls=CommandGroup)
def service() -> None:
    """Cloud services enabled on hosts (block, compute)."""


@service.command("new")
@click.argument("kind", metavar="[TYPE]", required=False)
@click.option(
    "--driver", type=click.Choice(["file", "lvm", "libvirt"]), help="Driver of the service."
)
@click.option("--pool", help="Block pool: a directory name (file) or a volume group (lvm).")
@click.option(
    "--uri",
    help="compute: the libvirt URI, e.g. qemu:///system (default: this node's own test driver).",
)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Driver option, e.g. -o metadata_only=true (lvm).",
)
@json_option
@click.pass_obj
def service_new(
    obj: Context,
    kind: str | None,
    driver: str | None,
    pool: str | None,
    uri: str | None,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Enable a service on this node (over its local control socket): TYPE is block (the
    default) or compute. What is not given comes from the node's [block] or [compute]
    settings: the file driver in pool `default`; libvirt on this node's own test driver."""
    body: dict[str, Any] = {"type": kind, "driver": driver, "pool": pool}
    pairs = [o.partition("=") for o in options]
    if any(not sep or not key for key, sep, _ in pairs):
        raise click.UsageError("driver options are KEY=VALUE")
    chosen = {key: value for key, _, value in pairs}
    if uri is not None:
        if kind != "compute":
            raise click.UsageError("--uri is for `service new compute`")
        chosen["uri"] = uri
    if chosen:
        body["options"] = chosen
    record = obj.client(local_only=True).request(
        "POST", "/v1/services", body={k: v for k, v in body.items() if v is not None}
    )
    if as_json:
        print_json(record)
    else:
        where = f"pool {record['pool']}"
        if record["type"] == "compute":
            uri = record["options"].get("uri") or ""
            where = uri or "this node's own test driver"
        click.echo(
            f"Enabled {record['type']} service {record['id']} "
            f"({record['driver']}, {where}) on {record['node']}."
        )


@service.command("list")
@json_option
@click.pass_obj
def service_list(obj: Context, as_json: bool) -> None:
    """Services with their health and capacity."""
    result = obj.client().request("GET", "/v1/services")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "NODE", "TYPE", "DRIVER", "POOL", "HEALTH", "CAPACITY"],
        [
            [
                s["id"][:12],
                s["node"],
                s["type"],
                s["driver"],
                s["pool"],
                "ok"
                if (s.get("health") or {}).get("ok")
                else (s.get("health") or {}).get("message", "unknown"),
                _capacity(s),
            ]
            for s in result["services"]
        ],
    )


def _capacity(service: dict[str, Any]) -> str:
    """Free space of a block service; CPUs and memory of a compute host."""
    capacity = service.get("capacity") or {}
    if service["type"] == "compute" and capacity:
        return f"{capacity.get('cpus')} CPUs, {human_size(capacity.get('memory'))}"
    return human_size(capacity.get("free"))


@service.command("show")
@click.argument("ref", metavar="SERVICE")
@json_option
@click.pass_obj
def service_show(obj: Context, ref: str, as_json: bool) -> None:
    """One service."""
    record = obj.client().request("GET", resource_path("services", ref))
    if as_json:
        print_json(record)
    else:
        print_kv_table(list(record.items()))


@service.command("rm")
@click.argument("ref", metavar="SERVICE")
@click.pass_obj
def service_rm(obj: Context, ref: str) -> None:
    """Disable a service (refused while it has volumes)."""
    result = obj.client().request("DELETE", resource_path("services", ref))
    click.echo(f"Removed service {result['deleted']}.")


@click.group(cls=CommandGroup)
def volume() -> None:
    """Block volumes."""


@volume.command("create")
@click.argument("name")
@click.option("--size", required=True, help="e.g. 512M, 10G, 1T (a bare number is GiB).")
@click.option("--image", help="Make it from this image (id, prefix or name).")
@click.option("--node", help="Put it on this node (default: the scheduler decides).")
@click.option("--pool", help="Block pool.")
@click.option("--no-wait", is_flag=True, help="Return at once (status pending).")
@json_option
@click.pass_obj
def volume_create(
    obj: Context,
    name: str,
    size: str,
    image: str | None,
    node: str | None,
    pool: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Create a volume."""
    client = obj.client()
    record = client.request(
        "POST",
        "/v1/volumes",
        body={"name": name, "size": size, "image": image, "node": node, "pool": pool},
    )
    show_volume(record if no_wait else wait_volume(client, record), as_json)


@volume.command("list")
@json_option
@click.pass_obj
def volume_list(obj: Context, as_json: bool) -> None:
    """All volumes."""
    result = obj.client().request("GET", "/v1/volumes")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "NAME", "STATUS", "NODE", "SIZE", "ALLOCATED", "IMAGE"],
        [
            [
                v["id"][:12],
                v["name"],
                v["status"],
                v["node"],
                human_size(v["size"]),
                human_size(v["allocated"]),
                (v["image_id"] or "-")[:12],
            ]
            for v in result["volumes"]
        ],
    )


@volume.command("show")
@click.argument("ref", metavar="VOLUME")
@json_option
@click.pass_obj
def volume_show(obj: Context, ref: str, as_json: bool) -> None:
    """One volume, by id, unique id prefix or name."""
    show_volume(obj.client().request("GET", resource_path("volumes", ref)), as_json)


@volume.command("rm")
@click.argument("ref", metavar="VOLUME")
@click.option("--no-wait", is_flag=True, help="Return once asked (its node removes it).")
@click.pass_obj
def volume_rm(obj: Context, ref: str, no_wait: bool) -> None:
    """Delete a volume; its node removes it."""
    client = obj.client()
    result = client.request("DELETE", resource_path("volumes", ref))
    if "deleted" not in result and not no_wait:
        wait_volume(client, result, gone_ok=True)
    click.echo(f"Deleted volume {result.get('name')}.")


@volume.command("resize")
@click.argument("ref", metavar="VOLUME")
@click.option("--size", required=True, help="The new, larger size.")
@json_option
@click.pass_obj
def volume_resize(obj: Context, ref: str, size: str, as_json: bool) -> None:
    """Grow a volume."""
    client = obj.client()
    record = client.request("POST", resource_path("volumes", ref) + "/resize", body={"size": size})
    show_volume(wait_volume(client, record), as_json)


@volume.command("snapshot")
@click.argument("ref", metavar="VOLUME")
@click.argument("name", required=False)
@json_option
@click.pass_obj
def volume_snapshot(obj: Context, ref: str, name: str | None, as_json: bool) -> None:
    """Snapshot a volume (NAME defaults to snap-N)."""
    client = obj.client()
    record = client.request(
        "POST", resource_path("volumes", ref) + "/snapshot", body={"name": name} if name else {}
    )
    show_volume(wait_volume(client, record), as_json)
