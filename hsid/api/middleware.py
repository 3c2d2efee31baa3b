"""Request ids and the one place where errors become JSON responses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from hsid.errors import Conflict, HsidError, InvalidInput, NotFound, Unavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# A client's id is echoed back, so it must be short and harmless in logs and headers.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

ERROR_STATUS: dict[type[HsidError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class BadParameter(InvalidInput):
    """A query or path parameter is wrong: 400, where a wrong body field is 422."""

    code = "bad_parameter"


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to `{"error": {"code", "message"}}`; only real bugs become 500s."""
    try:
        return await handler(request)
    except BadParameter as err:
        return error_response(400, err.code, str(err))
    except HsidError as err:
        status = next((s for t, s in ERROR_STATUS.items() if isinstance(err, t)), 500)
        return error_response(status, err.code, str(err))
    except asyncpg.UniqueViolationError as err:
        return error_response(409, "conflict", err.detail or "already exists")
    except asyncpg.ForeignKeyViolationError as err:
        return error_response(409, "conflict", err.detail or "refers to a missing record")
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as err:
        log.warning("request_store_unavailable", path=request.path, error=str(err))
        return error_response(503, "unavailable", "a backing store is unavailable")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        request_id = request.get(REQUEST_ID_KEY, "")
        return error_response(500, "internal", f"internal error (request id {request_id})")
