"""The OpenAPI document: served, and it describes exactly the routes the app registers."""

from __future__ import annotations

import json
import re

from aiohttp import web
from aiohttp.test_utils import TestClient

from hsid.api.entities import Entity
from hsid.api.fields import columns
from hsid.api.openapi import OPENAPI_DOCUMENT
from hsid.api.server import build_app
from hsid.core.config import Config
from hsid.core.runtime import Runtime
from hsid.entities.edits import ENTITY_COLUMNS


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        routes.add((route.method.lower(), path))
    return routes


def documented_routes(document: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, operations in document["paths"].items()
            for method in operations}


async def test_every_registered_route_is_documented(api_client: TestClient) -> None:
    response = await api_client.get("/api/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    assert registered_routes(api_client.app) == documented_routes(document)


def resolve(document: dict, schema: dict) -> dict:
    """A schema, or the component its $ref names."""
    if "$ref" not in schema:
        return schema
    prefix = "#/components/schemas/"
    assert schema["$ref"].startswith(prefix)
    return document["components"]["schemas"][schema["$ref"].removeprefix(prefix)]


def test_every_reference_resolves() -> None:
    app = build_app(Runtime(config=Config(), stages=frozenset({"api"})))
    document = app[OPENAPI_DOCUMENT]
    text = json.dumps([document["paths"], document["components"]])
    for name in re.findall(r'"#/components/schemas/([^"]+)"', text):
        assert name in document["components"]["schemas"], name
    assert '"title": "' not in text  # no pydantic titles
    assert '"type": "null"' not in text  # nullable, as OpenAPI 3.0 spells it


def test_operations_are_fully_described() -> None:
    app = build_app(Runtime(config=Config(), stages=frozenset({"api"})))
    document = app[OPENAPI_DOCUMENT]
    operation_ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], (method, path)
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == set(part[1:-1] for part in path.split("/") if part.startswith("{"))
            if method in ("post", "put", "patch", "delete"):
                assert "409" in operation["responses"], (method, path)
    assert len(operation_ids) == len(set(operation_ids))
    events = document["paths"]["/api/events"]["get"]
    limit = next(p for p in events["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000,
                               "description": "page size", "default": 50}
    patch = document["paths"]["/api/events/{event_id}"]["patch"]
    body = resolve(document, patch["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"reviewed", "notes"}
    assert body["additionalProperties"] is False
    health = document["paths"]["/api/system/health"]["get"]
    assert "security" not in health


def test_entity_shape_is_what_entity_edits_return() -> None:
    assert columns(Entity) == " ".join(ENTITY_COLUMNS.split())
