"""An lvm block service end to end in a 2-node cluster, with real lvm2 on a loop device in
metadata-only mode: `block pv|vg|lv` through the store and the owning node's agent,
volumes scheduled into the volume group, refusals, changes that fail (`last_error`), and
removal down to a clean host."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.privileged]
MiB = 1024 * 1024


def ok(node: NodeProcess, *args: str) -> Any:
    result = node.cli(*args, "--json", timeout=120)
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def refused(node: NodeProcess, *args: str) -> str:
    result = node.cli(*args, timeout=120)
    assert result.returncode == 1, (args, result.stdout)
    return result.stderr


def host_lvm(command: str, vg: str) -> list[dict[str, str]]:
    out = subprocess.run(
        [command, "--reportformat", "json", vg],
        capture_output=True,
        text=True,
        env={"LVM_SUPPRESS_FD_WARNINGS": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if out.returncode != 0:
        return []
    kind = {"lvs": "lv", "vgs": "vg"}[command]
    return [row for report in json.loads(out.stdout)["report"] for row in report[kind]]


def host_lvm_change(*argv: str) -> None:
    """Change the host's LVM behind symphonyd's back (metadata only, as the service does)."""
    subprocess.run(
        [argv[0], "--driverloaded", "n", *argv[1:]],
        capture_output=True,
        check=True,
        stdin=subprocess.DEVNULL,
        env={"LVM_SUPPRESS_FD_WARNINGS": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_lvm_service_end_to_end(
    nodeset: NodeSet, loop_devices: Callable[[int], str], tmp_path: Path
) -> None:
    n1, n2 = nodeset.form(2)
    vg = f"sytest-{abs(hash(str(tmp_path))) % 10**8}"
    device = loop_devices(512 * MiB)
    service = ok(
        n2, "service", "new", "block", "--driver", "lvm", "--pool", vg, "-o", "metadata_only=true"
    )
    assert (service["driver"], service["pool"], service["options"]) == (
        "lvm",
        vg,
        {"metadata_only": True},
    )
    shown = ok(n1, "service", "show", service["id"])
    assert shown["health"]["ok"] and "does not exist yet" in shown["health"]["message"]
    assert "no option 'size'" in refused(n1, "service", "new", "--driver", "lvm", "-o", "size=1")

    # Physical volume, from the other node: the owning node's agent runs pvcreate.
    pv = ok(n1, "block", "pv", "create", device, service["id"])
    assert (pv["status"], pv["node"], pv["size"]) == ("ready", "n2", 512 * MiB)
    assert "already physical volume" in refused(n1, "block", "pv", "create", device, service["id"])
    assert "no device /dev/nonexistent-sy" in refused(
        n1, "block", "pv", "create", "/dev/nonexistent-sy", service["id"]
    )
    failed = [p for p in ok(n1, "block", "pv", "list")["pvs"] if p["status"] == "failed"]
    assert len(failed) == 1
    assert n1.cli("block", "pv", "remove", failed[0]["id"]).returncode == 0  # goes at once
    assert "not an absolute device path" in refused(
        n1, "block", "pv", "create", "loop0", service["id"]
    )
    assert "no service" in refused(n1, "block", "pv", "create", device, "nosuchservice")
    assert ok(n1, "block", "pv", "get", device)["id"] == pv["id"]  # by device path

    # Volume group named after the service's pool.
    group = ok(n1, "block", "vg", "create", pv["id"])
    assert (group["name"], group["status"]) == (vg, "ready") and 0 < group["free"] <= 512 * MiB
    assert [g["vg_name"] for g in host_lvm("vgs", vg)] == [vg]
    assert ok(n1, "block", "pv", "get", pv["id"])["vg_id"] == group["id"]

    # A logical volume in it, and a volume the scheduler puts there.
    lv = ok(n1, "block", "lv", "create", "100M", group["id"], "--name", "scratch")
    assert (lv["status"], lv["node"], lv["pool"], lv["actual_size"]) == (
        "ready",
        "n2",
        vg,
        100 * MiB,
    )
    volume = ok(n1, "volume", "create", "data", "--size", "64M", "--node", "n2")
    assert (volume["status"], volume["pool"]) == ("ready", vg)
    assert sorted(r["lv_name"] for r in host_lvm("lvs", vg)) == sorted(
        [f"sy-{lv['id']}", f"sy-{volume['id']}"]
    )
    assert {v["name"] for v in ok(n1, "block", "lv", "list")["lvs"]} == {"scratch", "data"}
    assert ok(n1, "volume", "resize", "data", "--size", "128M")["actual_size"] == 128 * MiB
    snap = refused(n1, "volume", "snapshot", "data")
    assert "metadata-only mode (no device-mapper): no snapshots" in snap
    # refused before anything is written: nothing for the agent to retry for ever
    assert ok(n1, "volume", "show", "data")["snapshots"] == []

    # Bad input, refused before anything is written.
    assert "above zero" in refused(n1, "block", "lv", "create", "0", group["id"])
    assert "bytes free" in refused(n1, "block", "lv", "create", "100T", group["id"])
    assert "no volume group" in refused(n1, "block", "lv", "create", "1G", "nosuchvg")
    assert "still holds volumes" in refused(n1, "block", "vg", "remove", group["id"])
    assert "belongs to volume group" in refused(n1, "block", "pv", "remove", pv["id"])
    assert "still has volumes: data, scratch" in refused(n1, "service", "rm", service["id"])

    # A change the group has no room for (280 MiB free cannot grow data by 300 MiB): the
    # record says what failed in `last_error` (the agent keeps trying), and the CLI exits
    # 1 with lvm2's reason.
    failure = refused(n1, "volume", "resize", "data", "--size", "428M")
    shown = ok(n1, "volume", "show", "data")
    error = shown["last_error"]
    assert error["action"] == "resize" and "Insufficient free space" in error["message"]
    assert f"volume data: last change failed: {error['message']}" in failure
    assert shown["status_message"] == f"last change failed: {error['message']}"
    assert (shown["status"], shown["size"], shown["actual_size"]) == ("ready", 428 * MiB, 128 * MiB)
    assert dt.datetime.fromisoformat(error["at"]) >= dt.datetime.fromisoformat(shown["created_at"])

    # Removal, down to a host without our LVM. Once scratch is gone there is room: the
    # resize succeeds and clears `last_error`.
    n1.cli("block", "lv", "remove", "scratch", timeout=120)
    grown = ok(n1, "volume", "resize", "data", "--size", "428M")
    assert (grown["actual_size"], grown["last_error"], grown["status_message"]) == (
        428 * MiB,
        None,
        "",
    )
    assert n1.cli("volume", "rm", "data", timeout=120).returncode == 0
    assert host_lvm("lvs", vg) == []
    assert "still has volume groups" in refused(n1, "service", "rm", service["id"])
    # A removal the host refuses (an LV made outside symphonyd is in the group) leaves the
    # group ready with `last_error`; the CLI exits 1 with the reason; the next removal
    # request clears it, and succeeds once the host allows it.
    host_lvm_change("lvcreate", "-an", "-Zn", "-L", "8M", "-n", "foreign", vg)
    failure = refused(n1, "block", "vg", "remove", group["id"])
    kept = ok(n1, "block", "vg", "get", group["id"])
    error = kept["last_error"]
    assert (kept["status"], error["action"]) == ("ready", "remove")
    assert "still holds 1 logical volumes" in error["message"]
    assert f"volume group {group['id'][:12]}: not removed: {error['message']}" in failure
    assert kept["status_message"] == f"not removed: {error['message']}"
    host_lvm_change("lvremove", "-y", f"{vg}/foreign")
    assert n1.cli("block", "vg", "remove", group["id"], timeout=120).returncode == 0
    assert host_lvm("vgs", vg) == []
    assert ok(n1, "block", "pv", "get", pv["id"])["vg_id"] is None
    assert n1.cli("block", "pv", "remove", device, timeout=120).returncode == 0
    assert ok(n1, "block", "pv", "list")["pvs"] == []
    pvs = subprocess.run(["pvs", "--reportformat", "json", device], capture_output=True)
    assert pvs.returncode != 0  # no longer a physical volume
    assert n1.cli("service", "rm", service["id"]).returncode == 0
