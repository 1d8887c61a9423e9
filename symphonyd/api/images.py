"""Image endpoints: import (upload or, on the control socket, a file read in place), list,
show, delete, and the content with Range support (a broken transfer resumes)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from aiohttp import web

from symphonyd.api.bodies import Body, read_body
from symphonyd.api.events import long_poll
from symphonyd.api.progress import with_progress
from symphonyd.api.routes import Route, daemon_of, json_response
from symphonyd.errors import Forbidden, Invalid, NotFound
from symphonyd.image.service import ImageService, check_sha256
from symphonyd.validation import parse_seconds, parse_uint

CHUNK = 1024 * 1024


def service_of(request: web.Request) -> ImageService:
    return daemon_of(request).require_images()


class ImportPath(Body):
    """A file of the host to import in place (control socket only)."""

    path: Annotated[str, msgspec.Meta(description="an absolute path on the node")]
    name: str | None = None
    description: str = ""
    sha256: str | None = None  # the expected checksum


async def create_image(request: web.Request) -> web.Response:
    service = service_of(request)
    if request.content_type == "application/json":
        # A file of this host, read in place by the daemon: only for local root.
        if not request["local"]:
            raise Forbidden("importing a file by path is only served on the control socket")
        body = await read_body(request, ImportPath)
        if not body.path.startswith("/"):
            raise Invalid("'path' must be an absolute path")
        record = await service.import_path(
            body.path, body.name, body.description, check_sha256(body.sha256)
        )
        return json_response(record, status=202)
    query = request.query
    expected = check_sha256(query.get("sha256"))

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    record = await service.import_stream(
        chunks(),
        request.content_length,
        query.get("name", ""),
        query.get("description", ""),
        expected,
    )
    return json_response(record, status=201)


async def list_images(request: web.Request) -> web.Response:
    records = await _live(request, service_of(request).records())
    return json_response({"images": records})


async def _live(request: web.Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Importing records with the bytes done so far, from the importing node's memory."""
    return await with_progress(request, "images", records, working=("importing",), bytes_only=True)


@long_poll
async def show_image(request: web.Request) -> web.Response:
    """With `?index=N`, wait (up to `wait`, default 30 s) until the record changes past
    revision N: how the CLI follows an import without polling."""
    service = service_of(request)
    record = service.resolve(request.match_info["ref"])
    index_text = request.query.get("index")
    if index_text is not None:
        index = parse_uint(index_text, what="index")
        deadline = time.monotonic() + parse_seconds(request.query.get("wait", "30s"), 600)
        store = service.cluster.store
        while record["mod_revision"] <= index and (remaining := deadline - time.monotonic()) > 0:
            with store.lock:
                seen = store.revision
            await service.cluster.wait_for_revision(seen, remaining)
            record = service.resolve(record["id"])
    return json_response((await _live(request, [record]))[0])


async def delete_image(request: web.Request) -> web.Response:
    return json_response(await service_of(request).delete(request.match_info["ref"]))


async def fetch_image(request: web.Request) -> web.Response:
    return json_response(await service_of(request).ensure_local(request.match_info["ref"]))


async def verify_image(request: web.Request) -> web.Response:
    checked = await service_of(request).verify_local(request.match_info["ref"])
    return json_response({"node": daemon_of(request).settings.name, "checked": checked})


async def image_content(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    record = service.resolve(request.match_info["ref"])
    fingerprint = record.get("fingerprint")
    if record["status"] != "ready" or not fingerprint:
        raise NotFound(f"image {record['id']} is {record['status']}, it has no content yet")
    if not service.files.has(fingerprint):
        holders = ", ".join(record["holders"]) or "none"
        raise NotFound(f"this node holds no copy of image {record['id']} (holders: {holders})")
    return web.FileResponse(
        service.files.path(fingerprint),
        headers={"Content-Type": "application/octet-stream", "X-Image-SHA256": fingerprint},
    )


ROUTES = [
    Route(
        "POST",
        "/v1/images",
        create_image,
        "Import an image: the raw file as the body (name, description, sha256 in the "
        "query), or on the control socket a JSON {path, name, description, sha256}",
        query={
            "name": "image name (required)",
            "description": "free text",
            "sha256": "expected checksum: a mismatch is refused and nothing kept",
        },
        raw_body=True,
        body=ImportPath,
        responses={
            201: "imported (upload)",
            202: "importing (file read in place)",
            400: "bad input, empty, checksum mismatch",
            409: "name taken",
        },
    ),
    Route("GET", "/v1/images", list_images, "All images"),
    Route(
        "GET",
        "/v1/images/{ref}",
        show_image,
        "One image by id, id prefix or name",
        query={
            "index": "wait until the record changes past this revision",
            "wait": "longest wait with index (default 30s)",
        },
        responses={404: "no such image", 409: "ambiguous"},
    ),
    Route(
        "DELETE",
        "/v1/images/{ref}",
        delete_image,
        "Delete an image",
        responses={200: "deleted", 404: "no such image"},
    ),
    Route(
        "POST",
        "/v1/images/{ref}/fetch",
        fetch_image,
        "Make the node that serves this request hold a verified copy (fetched from holders)",
        responses={200: "held here", 409: "not ready", 503: "no holder reachable"},
    ),
    Route(
        "POST",
        "/v1/images/{ref}/verify",
        verify_image,
        "Check this node's copy against its checksum (a corrupted copy is removed, then fetched)",
        responses={200: "what was checked"},
    ),
    Route(
        "GET",
        "/v1/images/{ref}/content",
        image_content,
        "The image file (Range requests resume a transfer)",
        node=True,
        responses={200: "the file", 206: "part of it", 404: "no copy here"},
    ),
]
