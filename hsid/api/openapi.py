"""The OpenAPI 3 document, generated from the route declarations that also validate requests."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from hsid.api.fields import OpenApiSchema
from hsid.api.routing import ApiRoute, ApiRoutes, Call, json_response

Schemas = dict[tuple[str, str], dict[str, Any]]
REF_TEMPLATE = "#/components/schemas/{model}"

OPENAPI_VERSION = "3.0.3"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the offending parameter or field"},
            },
        },
    },
}
ERROR_MEANINGS = {
    400: "bad parameter or unreadable body",
    401: "API key missing, wrong or revoked",
    404: "not found",
    409: "conflict with the current state",
    413: "body too large",
    422: "invalid body field",
    429: "rate limit reached",
    503: "a backing store is unavailable",
}
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
}

OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)

api = ApiRoutes("meta")


def _parameters(route: ApiRoute) -> list[dict[str, Any]]:
    params = []
    for where, model in (("path", route.path_params), ("query", route.query)):
        if model is None:
            continue
        schema = model.model_json_schema(schema_generator=OpenApiSchema)
        params += [{"name": name, "in": where, "required": where == "path" or info.is_required(),
                    "schema": schema["properties"][name]}
                   for name, info in model.model_fields.items()]
    return params


def _error_statuses(route: ApiRoute) -> set[int]:
    """The failures a route can answer with, from what its spec says it takes."""
    statuses = {503, *route.errors}
    if not route.public:
        statuses.add(401)
    if route.path_params or route.query or route.body or route.websocket:
        statuses.add(400)
    if route.path_params:
        statuses.add(404)
    if route.method != "GET":
        statuses.add(409)
    if route.body is not None:
        statuses |= {413, 422}
    return statuses


def _success(route: ApiRoute, schemas: Schemas) -> dict[str, Any]:
    if route.websocket:
        return {"description": "switching to the WebSocket protocol"}
    if route.status == 204:
        return {"description": "done, no content"}
    if route.media_types != ("application/json",):
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {"description": "the file", "content": dict.fromkeys(route.media_types, binary)}
    schema = schemas.get((route.operation_id, "response"), {})
    return {"description": "success", "content": {"application/json": {"schema": schema}}}


def _responses(route: ApiRoute, schemas: Schemas) -> dict[str, Any]:
    status = 101 if route.websocket else route.status
    responses: dict[str, Any] = {str(status): _success(route, schemas)}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for code in sorted(_error_statuses(route)):
        responses[str(code)] = {"description": ERROR_MEANINGS[code], **error}
    for code in route.responses:
        schema = schemas[(route.operation_id, str(code))]
        responses[str(code)] = {"description": "see the body",
                                "content": {"application/json": {"schema": schema}}}
    return responses


def operation(route: ApiRoute, schemas: Schemas) -> dict[str, Any]:
    doc = route.handler.__doc__
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": _parameters(route),
        "responses": _responses(route, schemas),
    }
    if doc:
        op["description"] = " ".join(doc.split())
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body.partial or any(
                info.is_required() for info in route.body.model_fields.values()),
            "content": {"application/json": {"schema": schemas[(route.operation_id, "body")]}},
        }
    if not route.public:
        schemes = ("ApiKeyHeader", "ApiKeyQuery") if route.websocket else ("ApiKeyHeader",)
        op["security"] = [{scheme: []} for scheme in schemes]
    return op


def _schemas(routes: list[ApiRoute]) -> tuple[Schemas, dict[str, Any]]:
    """Every route's body and response schemas, shared models as components, one pass."""
    shapes = [((route.operation_id, "body"), route.body) for route in routes]
    shapes += [((route.operation_id, "response"), route.response) for route in routes]
    shapes += [((route.operation_id, str(code)), shape) for route in routes
               for code, shape in route.responses.items()]
    inputs: list[tuple[tuple[str, str], JsonSchemaMode, TypeAdapter[Any]]] = [
        (key, "validation", TypeAdapter(shape)) for key, shape in shapes if shape is not None]
    found, defs = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE,
                                           schema_generator=OpenApiSchema)
    return {key: schema for (key, _), schema in found.items()}, defs.get("$defs", {})


def _version() -> str:
    try:
        return metadata.version("hsid")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def document(routes: Iterable[ApiRoute]) -> dict[str, Any]:
    """The whole document: every declared route, its parameters, body and responses."""
    routes = list(routes)
    schemas, components = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "hsid",
            "version": _version(),
            "description": "Home-security intelligence daemon: cameras, detections, "
                           "risk-scored events, alerts. Errors are {\"error\": {code, message}}.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": ERROR_SCHEMA, **dict(sorted(components.items()))},
                       "securitySchemes": SECURITY_SCHEMES},
    }


@api.get("/api/openapi.json", "This OpenAPI document")
async def get_openapi(call: Call) -> web.Response:
    return json_response(call.request.app[OPENAPI_DOCUMENT])
