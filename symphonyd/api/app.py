"""Builds the aiohttp application from every module's route table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from symphonyd.api import (
    block,
    cluster,
    events,
    images,
    instances,
    kv,
    lifecycles,
    nodes,
    openapi,
    progress,
    prometheus,
    services,
    tokens,
    ui,
)
from symphonyd.api.connections import CONNECTIONS, ConnectionGuard
from symphonyd.api.middleware import ROUTE, access, errors, measure
from symphonyd.api.routes import DAEMON, Route
from symphonyd.config import API_DEFAULTS

if TYPE_CHECKING:
    from symphonyd.daemon import Daemon

# Bodies above this are refused before they are read (KV values are capped lower, at 512 KiB).
MAX_BODY = 1024 * 1024


def all_routes() -> list[Route]:
    return [
        *cluster.ROUTES,
        *nodes.ROUTES,
        *kv.ROUTES,
        *images.ROUTES,
        *services.ROUTES,
        *tokens.ROUTES,
        *block.ROUTES,
        *instances.ROUTES,
        *lifecycles.ROUTES,
        *events.ROUTES,
        *progress.ROUTES,
        *openapi.ROUTES,
        *prometheus.ROUTES,
        *ui.ROUTES,
    ]


def make_app(daemon: Daemon) -> web.Application:
    limits = {**API_DEFAULTS, **daemon.settings.api}
    guard = ConnectionGuard(
        float(limits["header_timeout"]), int(limits["max_connections"]), daemon.member_addresses
    )
    app = web.Application(
        middlewares=[guard.middleware, measure, errors, access], client_max_size=MAX_BODY
    )
    app[CONNECTIONS] = guard  # attached to the server once the runner is set up
    app[DAEMON] = daemon
    routes = all_routes()
    app[ROUTE] = {}
    app[openapi.ROUTES_KEY] = routes
    app[events.LONG_POLLS] = set()
    for route in routes:
        resource = app.router.add_route(route.method, route.path, route.handler)
        app[ROUTE][(route.method, resource.resource.canonical)] = route  # type: ignore[union-attr]
    app.on_shutdown.append(events.cancel_long_polls)
    return app
