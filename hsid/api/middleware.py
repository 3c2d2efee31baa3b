"""Request ids and the one place where errors become JSON responses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from hsid.core.errors import Conflict, HsidError, InvalidInput, NotFound, Unavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# A client's id is echoed back, so it must be short and harmless in logs and headers.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BadParameter(InvalidInput):
    """A query or path parameter is wrong: 400, where a wrong body field is 422."""

    code = "bad_parameter"


class MalformedBody(BadParameter):
    """The body is not JSON at all (or not UTF-8): 400, nothing in it could be read."""

    code = "malformed_body"


class Unauthorized(HsidError):
    code = "unauthorized"


class RateLimited(HsidError):
    """Too many requests from one client; `retry_after` seconds until the window resets."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


ERROR_STATUS: dict[type[HsidError], int] = {
    BadParameter: 400,
    InvalidInput: 422,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}


@dataclass(frozen=True, slots=True)
class ApiError:
    """What an error response said, kept on the request for the audit log."""

    status: int
    code: str
    message: str


ERROR_KEY = web.RequestKey("api_error", ApiError)


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _SAFE_REQUEST_ID.fullmatch(given) else str(uuid.uuid4())
    request[REQUEST_ID_KEY] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response


def _classify(request: web.Request, err: Exception) -> tuple[int, str, str]:
    """(status, code, message) for anything a handler raised; unknown errors are 500s."""
    if isinstance(err, HsidError):
        status = next((s for t, s in ERROR_STATUS.items() if isinstance(err, t)), 500)
        return status, err.code, str(err)
    if isinstance(err, asyncpg.UniqueViolationError):
        return 409, "conflict", err.detail or "already exists"
    if isinstance(err, asyncpg.ForeignKeyViolationError):
        return 409, "conflict", err.detail or "refers to a missing record"
    if isinstance(err, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
        # A value the validation let through but the database refuses is still bad input
        # (never a 500); the warning points at the field spec that should have caught it.
        log.warning("request_refused_by_database", path=request.path, error=str(err))
        return 422, "invalid_input", str(err)
    if isinstance(err, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError
                  | aioredis.ConnectionError | aioredis.TimeoutError):
        log.warning("request_store_unavailable", path=request.path, error=str(err))
        return 503, "unavailable", "a backing store is unavailable"
    log.error("request_failed", method=request.method, path=request.path, exc_info=err)
    request_id = request.get(REQUEST_ID_KEY, "")
    return 500, "internal", f"internal error (request id {request_id})"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to `{"error": {"code", "message"}}`; only real bugs become 500s."""
    field: str | None = None
    headers: dict[str, str] = {}
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, code = exc.status, exc.reason.lower().replace(" ", "_")
        message = exc.text or exc.reason
        if "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
    except Exception as err:
        status, code, message = _classify(request, err)
        field = err.field if isinstance(err, InvalidInput) else None
        if isinstance(err, RateLimited):
            headers["Retry-After"] = str(err.retry_after)
    request[ERROR_KEY] = ApiError(status, code, message)
    response = error_response(status, code, message, field)
    response.headers.update(headers)
    return response
