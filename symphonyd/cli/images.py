"""`symphonyd image new|list|show|rm`, keeping the original CLI's argument order:
`image new DESCRIPTION NAME FILE`."""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any

import click

from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import (
    ProgressBar,
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

IMAGE_FIELDS = [
    "id",
    "name",
    "description",
    "status",
    "status_message",
    "format",
    "size",
    "virtual_size",
    "fingerprint",
    "holders",
    "node",
    "created_at",
]
IMPORT_LIMIT = 6 * 3600.0  # the longest import followed, however steadily it progresses
STALL_LIMIT = 600.0  # an import whose progress stands still this long is given up on
PROGRESS_REFRESH = 1.0  # seconds between re-reads while a progress bar is drawn
STALL_CHECK = 15.0  # seconds between re-reads otherwise (to notice an import that stalls)


def print_image(record: dict[str, Any]) -> None:
    print_kv_table([(key, record.get(key)) for key in IMAGE_FIELDS])


class _Counting(io.RawIOBase):
    """A file wrapper that advances a progress bar as http.client reads it."""

    def __init__(self, f: io.BufferedReader, progress: ProgressBar | None, task: Any) -> None:
        self.f, self.progress, self.task = f, progress, task

    def fileno(self) -> int:
        return self.f.fileno()

    def tell(self) -> int:
        return self.f.tell()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if self.progress is not None:
            self.progress.update(self.task, advance=len(data))
        return data


def import_image(
    client: Client,
    *,
    local: bool,
    description: str,
    name: str,
    path: str,
    sha256: str | None,
    wait: bool,
    show_progress: bool,
) -> dict[str, Any]:
    if not os.path.exists(path):
        raise Invalid(f"no such file: {path}")
    if not os.path.isfile(path):
        raise Invalid(f"{path} is not a regular file")
    size = os.path.getsize(path)
    if local:
        record = client.request(
            "POST",
            "/v1/images",
            body={
                "path": os.path.abspath(path),
                "name": name,
                "description": description,
                "sha256": sha256,
            },
        )
        return wait_for_import(client, record, size, show_progress) if wait else record
    with progress_bar(show_progress) as progress, open(path, "rb") as f:
        task = progress.add_task("uploading", total=size)
        body = _Counting(f, progress, task)
        query = {"name": name, "description": description, "sha256": sha256}
        return dict(
            client.request(
                "POST",
                "/v1/images",
                raw=body,  # type: ignore[arg-type]
                query=query,
                timeout=3600,
            )
        )


def wait_for_import(
    client: Client, record: dict[str, Any], size: int, show_progress: bool
) -> dict[str, Any]:
    """Follow an import until it is ready or failed (no news for 10 minutes: give up)."""
    last = {"progress": -1, "at": time.monotonic()}
    with progress_bar(show_progress) as progress:
        task = progress.add_task("importing", total=size)

        def done(record: dict[str, Any]) -> bool:
            if record["status"] != "importing":
                return True
            if record.get("progress", 0) != last["progress"]:
                last.update(progress=record.get("progress", 0), at=time.monotonic())
                progress.update(task, completed=last["progress"])
            if time.monotonic() - last["at"] > STALL_LIMIT:
                raise DriverError(f"image {record['id']} made no progress for 10 minutes")
            return False

        found = follow_record(
            client,
            "images",
            resource_path("images", record["id"]),
            record,
            done,
            timeout=IMPORT_LIMIT,
            expired=lambda record: DriverError(
                f"image {record['id']} is still importing after {IMPORT_LIMIT:.0f} s"
            ),
            # the bytes done live in the importing node's memory: re-read to see them move
            refresh=PROGRESS_REFRESH if show_progress else STALL_CHECK,
        )
    assert found is not None  # not gone_ok: a vanished image raised NotFound
    if found["status"] == "failed":
        raise DriverError(f"import of {found['name']!r} failed: {found['status_message']}")
    return found


@click.group(cls=CommandGroup)
def image() -> None:
    """Cloud images: content-addressed, verified by SHA-256."""


@image.command("new")
@click.argument("description")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--sha256", help="Expected SHA-256: a mismatch is refused, nothing kept.")
@click.option("--no-wait", is_flag=True, help="Return once the import has started.")
@json_option
@click.pass_obj
def image_new(
    obj: Context,
    description: str,
    name: str,
    file: str,
    sha256: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Import FILE as image NAME (on the local socket the node reads it in place)."""
    client = obj.client(timeout=120)
    record = import_image(
        client,
        local=not obj.addr,
        description=description,
        name=name,
        path=file,
        sha256=sha256,
        wait=not no_wait,
        show_progress=sys.stderr.isatty() and not as_json,
    )
    if as_json:
        print_json(record)
    else:
        print_image(record)


@image.command("list")
@json_option
@click.pass_obj
def image_list(obj: Context, as_json: bool) -> None:
    """All images."""
    result = obj.client().request("GET", "/v1/images")
    if as_json:
        print_json(result)
        return
    print_table(
        ["ID", "NAME", "STATUS", "FORMAT", "SIZE", "HOLDERS", "FINGERPRINT"],
        [
            [
                r["id"][:12],
                r["name"],
                r["status"],
                r["format"],
                human_size(r["size"]),
                ",".join(r["holders"]) or "-",
                (r["fingerprint"] or "-")[:16],
            ]
            for r in result["images"]
        ],
    )


@image.command("show")
@click.argument("image_ref", metavar="IMAGE")
@json_option
@click.pass_obj
def image_show(obj: Context, image_ref: str, as_json: bool) -> None:
    """One image, by id, unique id prefix or name."""
    record = obj.client().request("GET", resource_path("images", image_ref))
    if as_json:
        print_json(record)
    else:
        print_image(record)


@image.command("rm")
@click.argument("image_ref", metavar="IMAGE")
@json_option
@click.pass_obj
def image_rm(obj: Context, image_ref: str, as_json: bool) -> None:
    """Delete an image (by id, unique id prefix or name)."""
    result = obj.client().request("DELETE", resource_path("images", image_ref))
    if as_json:
        print_json(result)
    else:
        click.echo(f"Deleted image {result['name']} ({result['deleted']}).")
