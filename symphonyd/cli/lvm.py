"""`symphonyd block pv|vg|lv create|get|list|remove`: the original CLI's LVM verbs, wired.

Each command records what it wants through the API (any node); the agent of the node that
owns the lvm service does it; write commands wait for a final status unless `--no-wait`.
"""

from __future__ import annotations

import time
from typing import Any

import click

from symphonyd.cli.block import WAIT_LIMIT, wait_volume
from symphonyd.cli.images import human_size
from symphonyd.cli.output import print_json, print_kv_table, print_table, resource_path
from symphonyd.client import Client
from symphonyd.errors import DriverError, NotFound

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
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        if record["status"] == "failed":
            raise DriverError(f"{what} {record['id'][:12]} failed: {record['status_message']}")
        if record["status"] == "ready" and record["status_message"].startswith("not removed"):
            raise DriverError(f"{what} {record['id'][:12]}: {record['status_message']}")
        if record["status"] not in ("pending", "creating", "deleting"):
            return record
        time.sleep(0.2)
        try:
            record = client.request("GET", resource_path(f"block/{table}", record["id"]))
        except NotFound:
            if gone_ok:
                return None
            raise
    raise DriverError(f"{what} {record['id'][:12]} is still {record['status']}")


def register(main: click.Group, run_safely: Any, json_option: Any) -> None:
    @main.group()
    def block() -> None:
        """LVM of lvm block services: physical volumes, volume groups, logical volumes."""

    def show(record: dict[str, Any] | None, as_json: bool) -> None:
        if record is None:
            return
        if as_json:
            print_json(record)
        else:
            print_kv_table(list(record.items()))

    def add_common_verbs(kind: str, group: click.Group) -> None:
        table, what = KINDS[kind]
        headers, (label,) = COLUMNS[kind]

        @group.command("get")
        @click.argument("ref", metavar=f"{kind.upper()}_ID")
        @json_option
        @click.pass_obj
        @run_safely
        def get(obj: Any, ref: str, as_json: bool) -> None:
            show(obj.client().request("GET", resource_path(f"block/{table}", ref)), as_json)

        get.help = f"One {what} (id, id prefix, or {label})."

        @group.command("list")
        @json_option
        @click.pass_obj
        @run_safely
        def listing(obj: Any, as_json: bool) -> None:
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

        listing.help = f"All {what}s."

        @group.command("remove")
        @click.argument("ref", metavar=f"{kind.upper()}_ID")
        @click.option("--no-wait", is_flag=True, help="Return once the removal is recorded.")
        @click.pass_obj
        @run_safely
        def remove(obj: Any, ref: str, no_wait: bool) -> None:
            client = obj.client()
            result = client.request("DELETE", resource_path(f"block/{table}", ref))
            if "deleted" not in result and not no_wait:
                wait_record(client, kind, result, gone_ok=True)
            click.echo(f"Removed {what} {result.get('deleted', result.get('id', ref))[:12]}.")

        remove.help = f"Remove a {what} from its node."

    @block.group()
    def pv() -> None:
        """Physical volumes."""

    @pv.command("create")
    @click.argument("device")
    @click.argument("service_id")
    @click.option("--no-wait", is_flag=True, help="Return at once (status pending).")
    @json_option
    @click.pass_obj
    @run_safely
    def pv_create(obj: Any, device: str, service_id: str, no_wait: bool, as_json: bool) -> None:
        """Make DEVICE of the node of lvm service SERVICE_ID a physical volume."""
        client = obj.client()
        record = client.request(
            "POST", "/v1/block/pvs", body={"device": device, "service": service_id}
        )
        show(record if no_wait else wait_record(client, "pv", record), as_json)

    add_common_verbs("pv", pv)

    @block.group()
    def vg() -> None:
        """Volume groups."""

    @vg.command("create")
    @click.argument("pv_id")
    @click.option("--name", help="Group name (default: the lvm service's pool).")
    @click.option("--no-wait", is_flag=True, help="Return at once (status pending).")
    @json_option
    @click.pass_obj
    @run_safely
    def vg_create(obj: Any, pv_id: str, name: str | None, no_wait: bool, as_json: bool) -> None:
        """Make a volume group of physical volume PV_ID."""
        client = obj.client()
        body = {"pv": pv_id, **({"name": name} if name else {})}
        record = client.request("POST", "/v1/block/vgs", body=body)
        show(record if no_wait else wait_record(client, "vg", record), as_json)

    add_common_verbs("vg", vg)

    @block.group()
    def lv() -> None:
        """Logical volumes (volumes of lvm services)."""

    @lv.command("create")
    @click.argument("size")
    @click.argument("vg_id")
    @click.option("--name", help="Volume name (default: lv-<id prefix>).")
    @click.option("--no-wait", is_flag=True, help="Return at once (status pending).")
    @json_option
    @click.pass_obj
    @run_safely
    def lv_create(
        obj: Any, size: str, vg_id: str, name: str | None, no_wait: bool, as_json: bool
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
    @run_safely
    def lv_get(obj: Any, ref: str, as_json: bool) -> None:
        """One logical volume (id, id prefix or name)."""
        show(obj.client().request("GET", resource_path("block/lvs", ref)), as_json)

    @lv.command("list")
    @json_option
    @click.pass_obj
    @run_safely
    def lv_list(obj: Any, as_json: bool) -> None:
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
    @click.option("--no-wait", is_flag=True, help="Return once the removal is recorded.")
    @click.pass_obj
    @run_safely
    def lv_remove(obj: Any, ref: str, no_wait: bool) -> None:
        """Remove a logical volume."""
        client = obj.client()
        result = client.request("DELETE", resource_path("block/lvs", ref))
        if "deleted" not in result and not no_wait:
            wait_volume(client, result, gone_ok=True)
        click.echo(f"Removed logical volume {result.get('name')}.")
