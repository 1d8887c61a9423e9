"""`symphonyd block pv|vg|lv create|get|list|remove`: the original CLI's LVM verbs, wired.

Each command records what it wants through the API (any node); the agent of the node that
owns the lvm service does it; write commands wait for a final status unless `--no-wait`.
"""

from __future__ import annotations

from typing import Any

import click

from symphonyd.cli.block import WAIT_LIMIT, failed_change, wait_volume
from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import human_size, print_json, print_kv_table, print_table, resource_path
from symphonyd.cli.wait import follow_record
from symphonyd.client import Client
from symphonyd.errors import DriverError

KINDS = {"pv": ("pvs", "physical volume"), "vg": ("vgs", "volume group")}
COLUMNS = {
    "pv": (["ID", "NODE", "DEVICE", "STATUS", "SIZE", "FREE", "VG"], ["device"]),
    "vg": (["ID", "NODE", "NAME", "STATUS", "SIZE", "FREE", "PVS"], ["name"]),
}


def wait_record(
    client: Client, kind: str, record: dict[str, Any], *, gone_ok: bool = False
) -> dict[str, Any] | None:
    """Follow a physical volume or group until it is ready or failed (or gone, for remove)."""
    table, what = KINDS[kind]

    def done(record: dict[str, Any]) -> bool:
        if record["status"] == "failed":
            raise DriverError(f"{what} {record['id'][:12]} failed: {record['status_message']}")
        failure = failed_change(record)
        if failure is not None:
            raise DriverError(f"{what} {record['id'][:12]}: {failure}")
        return record["status"] not in ("pending", "creating", "deleting")

    return follow_record(
        client,
        table,
        resource_path(f"block/{table}", record["id"]),
        record,
        done,
        timeout=WAIT_LIMIT,
        expired=lambda record: DriverError(
            f"{what} {record['id'][:12]} is still {record['status']}"
        ),
        gone_ok=gone_ok,
    )


def show(record: dict[str, Any] | None, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        print_json(record)
    else:
        print_kv_table(list(record.items()))


def get_record(obj: Context, kind: str, ref: str, as_json: bool) -> None:
    table, _ = KINDS[kind]
    show(obj.client().request("GET", resource_path(f"block/{table}", ref)), as_json)


def list_records(obj: Context, kind: str, as_json: bool) -> None:
    table, _ = KINDS[kind]
    headers, (label,) = COLUMNS[kind]
    result = obj.client().request("GET", f"/v1/block/{table}")
    if as_json:
        print_json(result)
        return
    rows = []
    for r in result[table]:
        last = (r["vg_id"] or "-")[:12] if kind == "pv" else len(r["pv_ids"])
        rows.append(
            [
                r["id"][:12],
                r["node"],
                r[label],
                r["status"],
                human_size(r["size"]),
                human_size(r["free"]),
                last,
            ]
        )
    print_table(headers, rows)


def remove_record(obj: Context, kind: str, ref: str, no_wait: bool) -> None:
    table, what = KINDS[kind]
    client = obj.client()
    result = client.request("DELETE", resource_path(f"block/{table}", ref))
    if "deleted" not in result and not no_wait:
        wait_record(client, kind, result, gone_ok=True)
    click.echo(f"Removed {what} {result.get('deleted', result.get('id', ref))[:12]}.")


no_wait_removal = click.option(
    "--no-wait", is_flag=True, help="Return once the removal is recorded."
)
no_wait_creation = click.option("--no-wait", is_flag=True, help="Return at once (status pending).")


@click.group(cls=CommandGroup)
def block() -> None:
    """LVM of lvm block services: physical volumes, volume groups, logical volumes."""


@block.group()
def pv() -> None:
    """Physical volumes."""


@pv.command("create")
@click.argument("device")
@click.argument("service_id")
@no_wait_creation
@json_option
@click.pass_obj
def pv_create(obj: Context, device: str, service_id: str, no_wait: bool, as_json: bool) -> None:
    """Make DEVICE of the node of lvm service SERVICE_ID a physical volume."""
    client = obj.client()
    record = client.request("POST", "/v1/block/pvs", body={"device": device, "service": service_id})
    show(record if no_wait else wait_record(client, "pv", record), as_json)


@pv.command("get")
@click.argument("ref", metavar="PV_ID")
@json_option
@click.pass_obj
def pv_get(obj: Context, ref: str, as_json: bool) -> None:
    """One physical volume (id, id prefix, or device)."""
    get_record(obj, "pv", ref, as_json)


@pv.command("list")
@json_option
@click.pass_obj
def pv_list(obj: Context, as_json: bool) -> None:
    """All physical volumes."""
    list_records(obj, "pv", as_json)


@pv.command("remove")
@click.argument("ref", metavar="PV_ID")
@no_wait_removal
@click.pass_obj
def pv_remove(obj: Context, ref: str, no_wait: bool) -> None:
    """Remove a physical volume from its node."""
    remove_record(obj, "pv", ref, no_wait)


@block.group()
def vg() -> None:
    """Volume groups."""


@vg.command("create")
@click.argument("pv_id")
@click.option("--name", help="Group name (default: the lvm service's pool).")
@no_wait_creation
@json_option
@click.pass_obj
def vg_create(obj: Context, pv_id: str, name: str | None, no_wait: bool, as_json: bool) -> None:
    """Make a volume group of physical volume PV_ID."""
    client = obj.client()
    body = {"pv": pv_id, **({"name": name} if name else {})}
    record = client.request("POST", "/v1/block/vgs", body=body)
    show(record if no_wait else wait_record(client, "vg", record), as_json)


@vg.command("get")
@click.argument("ref", metavar="VG_ID")
@json_option
@click.pass_obj
def vg_get(obj: Context, ref: str, as_json: bool) -> None:
    """One volume group (id, id prefix, or name)."""
    get_record(obj, "vg", ref, as_json)


@vg.command("list")
@json_option
@click.pass_obj
def vg_list(obj: Context, as_json: bool) -> None:
    """All volume groups."""
    list_records(obj, "vg", as_json)


@vg.command("remove")
@click.argument("ref", metavar="VG_ID")
@no_wait_removal
@click.pass_obj
def vg_remove(obj: Context, ref: str, no_wait: bool) -> None:
    """Remove a volume group from its node."""
    remove_record(obj, "vg", ref, no_wait)


@block.group()
def lv() -> None:
    """Logical volumes (volumes of lvm services)."""


@lv.command("create")
@click.argument("size")
@click.argument("vg_id")
@click.option("--name", help="Volume name (default: lv-<id prefix>).")
@no_wait_creation
@json_option
@click.pass_obj
def lv_create(
    obj: Context, size: str, vg_id: str, name: str | None, no_wait: bool, as_json: bool
) -> None:
    """Make a logical volume of SIZE (10G, 512M, or a bare number of GiB) in VG_ID."""
    client = obj.client()
    body = {"size": size, "vg": vg_id, **({"name": name} if name else {})}
    record = client.request("POST", "/v1/block/lvs", body=body)
    show(record if no_wait else wait_volume(client, record), as_json)


@lv.command("get")
@click.argument("ref", metavar="LV_ID")
@json_option
@click.pass_obj
def lv_get(obj: Context, ref: str, as_json: bool) -> None:
    """One logical volume (id, id prefix or name)."""
    show(obj.client().request("GET", resource_path("block/lvs", ref)), as_json)


@lv.command("list")
@json_option
@click.pass_obj
def lv_list(obj: Context, as_json: bool) -> None:
    """All logical volumes."""
    result = obj.client().request("GET", "/v1/block/lvs")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "NAME", "STATUS", "NODE", "VG", "SIZE"],
        [
            [v["id"][:12], v["name"], v["status"], v["node"], v["pool"], human_size(v["size"])]
            for v in result["lvs"]
        ],
    )


@lv.command("remove")
@click.argument("ref", metavar="LV_ID")
@no_wait_removal
@click.pass_obj
def lv_remove(obj: Context, ref: str, no_wait: bool) -> None:
    """Remove a logical volume."""
    client = obj.client()
    result = client.request("DELETE", resource_path("block/lvs", ref))
    if "deleted" not in result and not no_wait:
        wait_volume(client, result, gone_ok=True)
    click.echo(f"Removed logical volume {result.get('name')}.")
