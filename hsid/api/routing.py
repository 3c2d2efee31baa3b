"""Declared API routes: one spec per route drives parsing, validation, audit and OpenAPI."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError

from hsid.api.fields import Body, Shape
from hsid.api.keys import ACTOR_KEY, ANONYMOUS, RUNTIME
from hsid.api.middleware import BadParameter, MalformedBody
from hsid.core.errors import InvalidInput
from hsid.core.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Audit:
    """What a route changes: the audit row's action and resource type, and which path
    parameter names the resource (a create names it through `Call.audit`)."""

    action: str
    resource_type: str
    id_param: str | None = None


@dataclass(slots=True)
class AuditNote:
    """What a handler adds to its route's audit row."""

    action: str | None = None
    resource_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


AUDIT_NOTE_KEY = web.RequestKey("audit_note", AuditNote)


@dataclass(slots=True)
class Call:
    """One validated request: path, query and body already parsed by the route's spec."""

    request: web.Request
    path: dict[str, Any]
    query: dict[str, Any]
    body: dict[str, Any]

    @property
    def runtime(self) -> Runtime:
        return self.request.app[RUNTIME]

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.require_pool()

    @property
    def redis(self) -> aioredis.Redis:
        return self.runtime.require_redis()

    @property
    def actor(self) -> str:
        return self.request.get(ACTOR_KEY, ANONYMOUS)

    def audit(self, resource_id: Any = None, action: str | None = None, **details: Any) -> None:
        """Add to this call's audit row; what is noted before a failure is kept for it."""
        note = self.request.setdefault(AUDIT_NOTE_KEY, AuditNote())
        if resource_id is not None:
            note.resource_id = str(resource_id)
        if action is not None:
            note.action = action
        note.details.update(details)


ApiHandler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """A route as declared next to its handler; the handler returns JSON-able data, None
    (204), or a ready StreamResponse (files, WebSockets)."""

    method: str
    path: str
    handler: ApiHandler
    summary: str
    tag: str
    path_params: type[Shape] | None = None
    query: type[Shape] | None = None
    body: type[Body] | None = None
    status: int = 200
    response: Any = None  # a model or type, for the OpenAPI document
    media_types: tuple[str, ...] = ("application/json",)
    audit: Audit | None = None
    public: bool = False  # open even when API keys are required
    websocket: bool = False  # may also take the key as ?api_key= (browsers cannot set headers)
    errors: tuple[int, ...] = ()  # error statuses beyond the ones the spec implies
    responses: Mapping[int, Any] = field(default_factory=dict)  # other bodies by status

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class ApiRoutes:
    """A resource module's routes, declared with decorators like aiohttp's RouteTableDef."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[ApiRoute] = []

    def route(self, method: str, path: str, summary: str, **spec: Any) -> Callable[
        [ApiHandler], ApiHandler
    ]:
        def register(handler: ApiHandler) -> ApiHandler:
            self.routes.append(ApiRoute(method, path, handler, summary, self.tag, **spec))
            return handler

        return register

    def get(self, path: str, summary: str, **spec: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("GET", path, summary, **spec)

    def post(self, path: str, summary: str, **spec: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("POST", path, summary, **spec)

    def put(self, path: str, summary: str, **spec: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("PUT", path, summary, **spec)

    def patch(self, path: str, summary: str, **spec: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("PATCH", path, summary, **spec)

    def delete(self, path: str, summary: str, **spec: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("DELETE", path, summary, **spec)


# The registered aiohttp route -> its declaration, for the audit and auth middlewares.
ROUTE_SPECS = web.AppKey("route_specs", dict)


def route_spec(request: web.Request) -> ApiRoute | None:
    return request.app[ROUTE_SPECS].get(request.match_info.route)


def register(app: web.Application, routes: Iterable[ApiRoute]) -> None:
    specs: dict[web.AbstractRoute, ApiRoute] = app.setdefault(ROUTE_SPECS, {})
    for spec in routes:
        specs[app.router.add_route(spec.method, spec.path, _endpoint(spec))] = spec


def _endpoint(spec: ApiRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        path = parse_params(spec.path_params, request.match_info)
        query = parse_params(spec.query, request.query)
        body = parse_body(spec.body, await read_json(request)) if spec.body is not None else {}
        call = Call(request, path, query, body)
        if spec.audit is not None and body:
            call.audit(fields=sorted(body))
        result = await spec.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204)
        return json_response(result, status=spec.status)

    endpoint.__name__ = spec.operation_id
    return endpoint


def _invalid(err: ValidationError, kind: type[InvalidInput] = InvalidInput) -> InvalidInput:
    """The first of pydantic's errors, naming the field as the API does (`ids[0]`; `body`)."""
    error = err.errors()[0]
    name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                   for part in error["loc"]).lstrip(".") or "body"
    cause = (error.get("ctx") or {}).get("error")
    message = str(cause) if error["type"] == "value_error" and cause else error["msg"]
    if error["type"] == "missing":
        return kind(f"{name} is required", field=name)
    return kind(f"{name}: {message}", field=name)


def parse_params(model: type[Shape] | None, source: Mapping[str, str]) -> dict[str, Any]:
    """Query or path parameters by their model; anything wrong is a 400 naming the parameter."""
    if model is None:
        return {}
    given: dict[str, str] = {}
    for name in model.model_fields:
        values = source.getall(name, []) if hasattr(source, "getall") else (
            [source[name]] if name in source else []
        )
        if len(values) > 1:
            raise BadParameter(f"{name} is given more than once", field=name)
        if values:
            given[name] = values[0]
    try:
        return dict(model.model_validate(given))
    except ValidationError as err:
        raise _invalid(err, BadParameter) from err


def parse_body(model: type[Body], data: Any) -> dict[str, Any]:
    """A JSON object body by its model (strictly: no text for numbers); anything wrong is a
    422 naming the field. The dict holds only the keys given and the defaults that are not
    None (none for a PATCH), so its keys are safe column names."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    for key in data:
        if key in model.immutable:
            raise InvalidInput(f"{key} cannot be changed", field=str(key))
        if key not in model.model_fields:
            raise InvalidInput(f"unknown field {key!r}", field=str(key))
    if model.partial and not data:
        raise InvalidInput("give at least one field to change", field="body")
    try:
        parsed = model.model_validate(data, strict=True)
    except ValidationError as err:
        raise _invalid(err) from err
    return {name: getattr(parsed, name) for name, info in model.model_fields.items()
            if name in parsed.model_fields_set
            or (not model.partial and info.default is not None and not info.is_required())}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request: web.Request) -> Any:
    """The body as JSON ({} when empty). aiohttp's read() enforces the size cap (413);
    non-UTF-8 bytes, NaN/Infinity and nesting deep enough to exhaust the parser are 400s."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as err:
        raise MalformedBody("the body is not UTF-8 text", field="body") from err
    except (ValueError, RecursionError) as err:
        raise MalformedBody(f"the body is not valid JSON: {err}", field="body") from err


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, the API's one timestamp form."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date | uuid.UUID):
        return str(value)
    if isinstance(value, asyncpg.Record):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


dumps = functools.partial(json.dumps, default=_encode, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)
