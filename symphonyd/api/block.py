"""Block endpoints: services (enabled on the node that answers), volumes, and the LVM
physical volumes, volume groups and logical volumes of lvm services."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from symphonyd.api.bodies import Body, Size, Text, read_body
from symphonyd.api.progress import with_progress
from symphonyd.api.routes import Route, daemon_of, json_response, node_call
from symphonyd.block.service import BlockService
from symphonyd.departed import departed, orphaned_view
from symphonyd.errors import Forbidden, NotFound
from symphonyd.state import lvm


def block_of(request: web.Request) -> BlockService:
    return daemon_of(request).require_block()


class NewVolume(Body):
    """A volume to make: placed by the scheduler unless `node` is given."""

    name: str
    size: Size
    image: Text | None = None
    node: Text | None = None
    pool: Text | None = None


async def create_volume(request: web.Request) -> web.Response:
    body = await read_body(request, NewVolume)
    record = await block_of(request).create(body.name, body.size, body.image, body.node, body.pool)
    return json_response(record, status=202)


def _orphaned(request: web.Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Volumes of a node that is no longer a member show `orphaned` (`departed.py`)."""
    store = daemon_of(request).require_cluster().store
    with store.lock:
        gone = {r["id"] for r in records if departed(store, r.get("node"))}
    return [
        orphaned_view(r, "volume") if r["id"] in gone and r["status"] != "deleting" else r
        for r in records
    ]


async def list_volumes(request: web.Request) -> web.Response:
    records = await with_progress(request, "volumes", block_of(request).records())
    return json_response({"volumes": _orphaned(request, records)})


async def show_volume(request: web.Request) -> web.Response:
    record = block_of(request).resolve(request.match_info["ref"])
    return json_response(_orphaned(request, await with_progress(request, "volumes", [record]))[0])


async def delete_volume(request: web.Request) -> web.Response:
    return json_response(await block_of(request).delete(request.match_info["ref"]), status=202)


class NewSize(Body):
    size: Size


async def resize_volume(request: web.Request) -> web.Response:
    body = await read_body(request, NewSize)
    return json_response(
        await block_of(request).resize(request.match_info["ref"], body.size), status=202
    )


class NewSnapshot(Body):
    name: Text | None = None


async def snapshot_volume(request: web.Request) -> web.Response:
    body = await read_body(request, NewSnapshot)
    return json_response(
        await block_of(request).snapshot(request.match_info["ref"], body.name), status=202
    )


def _node_only(request: web.Request) -> None:
    if not node_call(request):
        raise Forbidden("a volume's content is read by the members' daemons only")


async def volume_digest(request: web.Request) -> web.Response:
    _node_only(request)
    return json_response(await block_of(request).digest(request.match_info["ref"]))


async def volume_content(request: web.Request) -> web.StreamResponse:
    _node_only(request)
    _volume, path = await block_of(request).readable_path(request.match_info["ref"])
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


TABLES = {"pvs": lvm.PVS, "vgs": lvm.VGS}


class NewPhysicalVolume(Body):
    device: Text
    service: Text


async def create_pv(request: web.Request) -> web.Response:
    body = await read_body(request, NewPhysicalVolume)
    record = await block_of(request).lvm.create_pv(body.device, body.service)
    return json_response(record, status=202)


class NewVolumeGroup(Body):
    """A volume group of a ready physical volume (named after the service's pool unless
    `name` is given)."""

    pv: Text
    name: Text | None = None


async def create_vg(request: web.Request) -> web.Response:
    body = await read_body(request, NewVolumeGroup)
    record = await block_of(request).lvm.create_vg(body.pv, body.name)
    return json_response(record, status=202)


class NewLogicalVolume(Body):
    size: Size
    vg: Text
    name: Text | None = None


async def create_lv(request: web.Request) -> web.Response:
    body = await read_body(request, NewLogicalVolume)
    record = await block_of(request).create_lv(body.size, body.vg, body.name)
    return json_response(record, status=202)


async def list_lvm(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "lvs":
        return json_response({"lvs": block_of(request).logical_volumes()})
    if kind not in TABLES:
        raise NotFound(f"no such LVM resource kind {kind!r} (pvs, vgs, lvs)")
    return json_response({kind: block_of(request).lvm.records(TABLES[kind])})


async def show_lvm(request: web.Request) -> web.Response:
    kind, ref = request.match_info["kind"], request.match_info["ref"]
    block = block_of(request)
    if kind == "lvs":
        return json_response(block.resolve(ref, logical=True))
    if kind not in TABLES:
        raise NotFound(f"no such LVM resource kind {kind!r} (pvs, vgs, lvs)")
    return json_response(block.lvm.resolve(TABLES[kind], ref))


async def delete_lvm(request: web.Request) -> web.Response:
    kind, ref = request.match_info["kind"], request.match_info["ref"]
    block = block_of(request)
    if kind == "lvs":
        volume = block.resolve(ref, logical=True)
        return json_response(await block.delete(volume["id"]), status=202)
    if kind not in TABLES:
        raise NotFound(f"no such LVM resource kind {kind!r} (pvs, vgs, lvs)")
    return json_response(await block.lvm.remove(TABLES[kind], ref), status=202)


ROUTES = [
    Route(
        "POST",
        "/v1/volumes",
        create_volume,
        "Create a volume (placed by the scheduler unless node is given); 202, then it "
        "becomes ready or failed",
        body=NewVolume,
        responses={
            202: "pending",
            400: "bad input",
            404: "no such node or image",
            409: "no room, name taken",
        },
    ),
    Route("GET", "/v1/volumes", list_volumes, "All volumes"),
    Route("GET", "/v1/volumes/{ref}", show_volume, "One volume by id, id prefix or name"),
    Route("DELETE", "/v1/volumes/{ref}", delete_volume, "Delete a volume (its node removes it)"),
    Route(
        "POST",
        "/v1/volumes/{ref}/resize",
        resize_volume,
        "Grow a volume",
        body=NewSize,
    ),
    Route(
        "POST",
        "/v1/volumes/{ref}/snapshot",
        snapshot_volume,
        "Snapshot a volume",
        body=NewSnapshot,
    ),
    Route(
        "GET",
        "/v1/volumes/{ref}/digest",
        volume_digest,
        "SHA-256 and size of a volume, read whole on its node (members' daemons only)",
        node=True,
        responses={403: "not a member's daemon", 409: "in use by a running instance"},
    ),
    Route(
        "GET",
        "/v1/volumes/{ref}/content",
        volume_content,
        "A volume's content, Range requests resume (members' daemons only; its node only)",
        node=True,
        responses={403: "not a member's daemon", 409: "in use by a running instance"},
    ),
    Route(
        "POST",
        "/v1/block/pvs",
        create_pv,
        "Make a device of an lvm service's node a physical volume (202; ready or failed)",
        body=NewPhysicalVolume,
        responses={202: "pending", 404: "no such service", 409: "device already recorded"},
    ),
    Route(
        "POST",
        "/v1/block/vgs",
        create_vg,
        "Make a volume group of a ready physical volume (named after the service's pool "
        "unless name is given)",
        body=NewVolumeGroup,
        responses={202: "pending", 404: "no such physical volume", 409: "in use, name taken"},
    ),
    Route(
        "POST",
        "/v1/block/lvs",
        create_lv,
        "Make a logical volume (a volume) in a volume group",
        body=NewLogicalVolume,
        responses={202: "pending", 400: "bad size", 404: "no such volume group"},
    ),
    Route("GET", "/v1/block/{kind}", list_lvm, "Physical volumes, volume groups or LVs"),
    Route("GET", "/v1/block/{kind}/{ref}", show_lvm, "One pv, vg (id, prefix, device, name) or lv"),
    Route(
        "DELETE",
        "/v1/block/{kind}/{ref}",
        delete_lvm,
        "Remove a pv, vg or lv (a vg holding volumes, a pv in a vg: refused)",
        responses={202: "deleting", 409: "still in use"},
    ),
]
