"""`GET /v1/openapi.json`, built from the route tables that the app serves."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from symphonyd import __version__
from symphonyd.api import bodies
from symphonyd.api.routes import Route, json_response, needed_scope

ROUTES_KEY: web.AppKey[list[Route]] = web.AppKey("route_list")
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
ERROR = {"$ref": "#/components/schemas/Error"}
UINT64 = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}
# Query parameters whose values are checked; the others are flags (present = on).
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "cas": UINT64,
    "flags": UINT64,
    "index": UINT64,
    "since": UINT64,
    "wait": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,3})?(ms|s|m|h)?$"},
    "table": {"type": "string"},
    "separator": {"type": "string"},
    "token": {"type": "string"},
    "name": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[^\\x00-\\x1f\\x7f]+$",
    },
    "description": {"type": "string", "maxLength": 2000, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
    "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
}
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "key": {
        "type": "string",
        "maxLength": 1024,
        "pattern": "^[^/\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$",
    },
    "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
    "ref": {"type": "string", "minLength": 1, "maxLength": 255},
}
FLAG = {"type": "string", "enum": ["", "true", "false", "1", "0"]}


def document(routes: list[Route]) -> dict[str, Any]:
    kinds = list(dict.fromkeys(route.body for route in routes if route.body is not None))
    refs, components = bodies.schemas(kinds)
    body_refs = dict(zip(kinds, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PARAM.sub(r"{\1}", route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "parameters": [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": PATH_SCHEMAS.get(name, {"type": "string"}),
                }
                for name in _PARAM.findall(route.path)
            ]
            + [
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": text,
                    "schema": QUERY_SCHEMAS.get(name, FLAG),
                }
                for name, text in route.query.items()
            ],
            "responses": {
                str(code): {"description": text}
                for code, text in {200: "success", **route.responses}.items()
            },
        }
        for code in (400, 401, 403, 404, 409, 503):
            operation["responses"].setdefault(
                str(code),
                {
                    "description": "error",
                    "content": {"application/json": {"schema": ERROR}},
                },
            )
        content: dict[str, Any] = {}
        if route.raw_body:
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        if route.body is not None:
            content["application/json"] = {"schema": body_refs[route.body]}
        if content:
            operation["requestBody"] = {
                "required": route.raw_body
                or (route.body is not None and bodies.is_required(route.body)),
                "content": content,
            }
        if route.auth == "token":
            operation["x-symphonyd-scope"] = needed_scope(route)
            if route.node:
                operation["x-symphonyd-node-credential"] = True
        if route.auth == "local":  # no token opens it: only the node's control socket
            operation["security"] = []
            operation["x-symphonyd-local-only"] = True
            operation["description"] = (
                "Only over the node's local control socket (root on the host); over HTTPS "
                "it is refused with 403, whatever the token."
            )
        else:
            operation["security"] = [] if route.auth in ("none", "join") else [{"bearer": []}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",  # 3.1: its schemas are JSON Schema, as msgspec writes them
        "info": {"title": "symphonyd control API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **components,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return json_response(document(request.app[ROUTES_KEY]))


ROUTES = [
    Route(
        "GET",
        "/v1/openapi.json",
        openapi,
        "This API's OpenAPI 3 description",
        auth="none",
        uninitialised=True,
    ),
]
