"""The audit log: one audit_logs row per call of a changing route (failures too), and its list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import structlog
from aiohttp import web

from hsid.api.fields import Shape, Str, Text, columns, params
from hsid.api.keys import ACTOR_KEY, ANONYMOUS, RUNTIME
from hsid.api.middleware import ERROR_KEY, REQUEST_ID_KEY, Handler
from hsid.api.queries import Listing, Page, TimeRange, fetch_page
from hsid.api.routing import AUDIT_NOTE_KEY, ApiRoute, ApiRoutes, AuditNote, Call, route_spec
from hsid.core.errors import Unavailable

log = structlog.get_logger(__name__)

USER_AGENT_MAX_LENGTH = 1024
RESOURCE_ID_MAX_LENGTH = 255  # audit_logs.resource_id is varchar(255)

INSERT_AUDIT = """
INSERT INTO audit_logs (action, resource_type, resource_id, actor, ip_address, user_agent,
                        details, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
Outcome = Literal["success", "failure"]


class AuditEntry(Shape):
    id: int
    timestamp: datetime
    action: str
    resource_type: str
    resource_id: str | None
    actor: str
    ip_address: str | None
    user_agent: str | None
    details: Any
    status: Outcome


AuditQuery = params(TimeRange, action=(Annotated[str, Text(50)], None),
                               resource_type=(Annotated[str, Text(50)], None),
                               resource_id=(Str, None), actor=(Annotated[str, Text(100)], None),
                               status=(Outcome, None))


AUDIT_COLUMNS = columns(AuditEntry, sql={"timestamp": '"timestamp"'})
LIST_AUDIT = Listing(
    select="SELECT " + AUDIT_COLUMNS + ' FROM audit_logs {where} ORDER BY "timestamp" DESC, '
           "id DESC LIMIT {limit} OFFSET {offset}",
    table="audit_logs",
    filters={
        "action": "action = {}",
        "resource_type": "resource_type = {}",
        "resource_id": "resource_id = {}",
        "actor": "actor = {}",
        "status": "status = {}",
        "start": '"timestamp" >= {}',
        "end": '"timestamp" < {}',
    },
)

api = ApiRoutes("audit")


@api.get("/api/audit", "List audit log entries, newest first", response=Page[AuditEntry],
         query=AuditQuery)
async def list_audit(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_AUDIT, call.query)


def _printable(value: str | None, limit: int) -> str | None:
    """Text safe for a varchar column: no NUL, no lone surrogates, at most `limit` chars."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:limit]


def _row(request: web.Request, spec: ApiRoute, status: int) -> tuple:
    audit = spec.audit
    assert audit is not None
    note = request.get(AUDIT_NOTE_KEY) or AuditNote()
    resource_id = note.resource_id
    if resource_id is None and audit.id_param is not None:
        resource_id = request.match_info.get(audit.id_param)
    details = {"method": request.method, "path": _printable(request.path, 2048),
               "status_code": status,
               "request_id": request.get(REQUEST_ID_KEY), **note.details}
    if (error := request.get(ERROR_KEY)) is not None:
        details["error"] = {"code": error.code, "message": _printable(error.message, 2048)}
    return (
        note.action or audit.action, audit.resource_type,
        _printable(resource_id, RESOURCE_ID_MAX_LENGTH), request.get(ACTOR_KEY, ANONYMOUS),
        _printable(request.remote, 45),
        _printable(request.headers.get("User-Agent"), USER_AGENT_MAX_LENGTH),
        details, "success" if status < 400 else "failure",
    )


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Write the audit row of a changing route once its outcome is known.

    Runs outside the error middleware, so it sees the final status of every call: a 404,
    409 or 422 is recorded as a failure, as is a refused key. Losing the database must not
    turn a change that happened into an error, so a failed write is logged, not raised.
    """
    spec = route_spec(request)
    response = await handler(request)
    if spec is None or spec.audit is None:
        return response
    row = _row(request, spec, response.status)
    try:
        await request.app[RUNTIME].require_pool().execute(INSERT_AUDIT, *row)
    except (Unavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        log.error("audit_write_failed", action=row[0], resource_id=row[2], error=str(err))
    return response
