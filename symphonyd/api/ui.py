"""The web dashboard: `/ui/` and its static files, and `/` sending a browser there.

The files of `symphonyd/ui/static/` (a flat directory shipped in the package and the
zipapp) are read into memory once, when the routes are made; a request names a key of
that table or gets 404, so no path can lead anywhere else. They need no token: the page
holds no secret, and everything it shows comes from the /v1 API with the token the user
signs in with. This module must not serve anything but those files, nor change anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from symphonyd.api.routes import Handler, Route, json_response

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# No inline script or style, nothing from elsewhere, never framed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated with the ETag: an upgrade shows at once
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """Every file of the static directory whose type is known, by its name."""
    found: dict[str, StaticFile] = {}
    for entry in (resources.files("symphonyd.ui") / "static").iterdir():
        kind = next((t for ext, t in TYPES.items() if entry.name.endswith(ext)), None)
        if kind is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        found[entry.name] = StaticFile(body, kind, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return found


FILES = load_files()


def _serve(request: web.Request, name: str) -> web.Response:
    found = FILES.get(name)
    if found is None:
        body = {"error": {"code": "not_found", "message": f"no such file: {request.path}"}}
        return json_response(body, status=404, headers={"X-Content-Type-Options": "nosniff"})
    headers = {**HEADERS, "ETag": found.etag}
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def root(request: web.Request) -> web.StreamResponse:
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPFound("/ui/")
    body = {
        "error": {"code": "not_found", "message": "no such endpoint: / (the dashboard is at /ui/)"}
    }
    return json_response(body, status=404)


async def to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["file"])


def _route(path: str, handler: Handler, summary: str) -> Route:
    return Route(
        "GET",
        path,
        handler,
        summary,
        auth="none",
        uninitialised=True,
        responses={302: "to /ui/", 404: "no such file"},
    )


ROUTES = [
    _route("/", root, "A browser is sent to the dashboard (/ui/); others get 404"),
    _route("/ui", to_index, "To /ui/"),
    _route("/ui/", index, "The web dashboard (no token: it signs in with one)"),
    _route("/ui/{file}", static_file, "One of the dashboard's static files"),
]
