"""`GET /metrics`: Prometheus text format (no token: like `/v1/health`, it tells no secret;
put it behind the firewall that guards the API port)."""

from __future__ import annotations

from aiohttp import web

from symphonyd import metrics
from symphonyd.api.routes import Route


async def prometheus_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


ROUTES = [
    Route(
        "GET",
        "/metrics",
        prometheus_metrics,
        "Prometheus metrics of this node",
        auth="none",
        uninitialised=True,
    ),
]
