"""Log routes: the logs table filtered, and frontend log records (rate-limited per client)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import asyncpg

from hsid.api.fields import Body, Field, Obj, Shape, Text, columns, params
from hsid.api.middleware import REQUEST_ID_KEY, RateLimited
from hsid.api.queries import Listing, Page, TimeRange, fetch_page
from hsid.api.routing import ApiRoutes, Call

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LEVELS = get_args(Level)
Source = Literal["backend", "frontend"]
SOURCES = get_args(Source)
REQUEST_ID_MAX_LENGTH = 36  # logs.request_id is varchar(36)


class Log(Shape):
    id: int
    timestamp: datetime
    level: Level
    component: str
    message: str
    camera_id: str | None
    event_id: int | None
    request_id: str | None
    detection_id: int | None
    duration_ms: int | None
    extra: Any
    source: Source
    user_agent: str | None


class LogBody(Body):
    level: Level
    message: Annotated[str, Text(10_000, min_length=1)]
    component: Annotated[str, Text(50, min_length=1)]
    camera_id: Annotated[str, Text(100)] | None = None
    extra: Obj | None = Field(None, description="structured context")


LogQuery = params(TimeRange, level=(Level, None), component=(Annotated[str, Text(50)], None),
                             camera_id=(Annotated[str, Text(100)], None), source=(Source, None),
                             request_id=(Annotated[str, Text(REQUEST_ID_MAX_LENGTH)], None))


LOG_COLUMNS = columns(Log, sql={"timestamp": '"timestamp"'})
INSERT_FRONTEND_LOG = (
    "INSERT INTO logs (level, component, message, camera_id, extra, source, user_agent, "
    "request_id) VALUES ($1, $2, $3, $4, $5, 'frontend', $6, $7) RETURNING " + LOG_COLUMNS
)
LIST_LOGS = Listing(
    select="SELECT " + LOG_COLUMNS + ' FROM logs {where} ORDER BY "timestamp" DESC, id DESC '
           "LIMIT {limit} OFFSET {offset}",
    table="logs",
    filters={
        "level": "level = {}",
        "component": "component = {}",
        "camera_id": "camera_id = {}",
        "source": "source = {}",
        "request_id": "request_id = {}",
        "start": '"timestamp" >= {}',
        "end": '"timestamp" < {}',
    },
)

# Redis key of one client's count in one minute; expires soon after the minute ends, so
# every process of a scaled-out install shares the same budget.
RATE_KEY = "ratelimit:frontend_logs:{client}:{minute}"
RATE_KEY_TTL_SECONDS = 120
USER_AGENT_MAX_LENGTH = 1024
api = ApiRoutes("logs")


async def _count_request(call: Call) -> None:
    """RateLimited once this client has sent api.frontend_logs_per_minute records this
    minute; a fixed window is enough to stop a looping frontend from flooding the table."""
    now = time.time()
    minute = int(now // 60)
    key = call.runtime.keyspace.key(
        RATE_KEY.format(client=call.request.remote or "unknown", minute=minute))
    async with call.redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, RATE_KEY_TTL_SECONDS)
        count, _ = await pipe.execute()
    if count > call.runtime.config.api.frontend_logs_per_minute:
        raise RateLimited("too many log records from this client; retry next minute",
                          retry_after=max(1, int(60 - now % 60)))


@api.get("/api/logs", "List log records, newest first", response=Page[Log], query=LogQuery)
async def list_logs(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_LOGS, call.query)


# Not audited: a frontend's log record is telemetry, not a change anyone makes to hsid.
@api.post("/api/logs", "Record a frontend log record", body=LogBody, status=201,
          response=Log, errors=(429,))
async def create_log(call: Call) -> asyncpg.Record:
    await _count_request(call)
    body, request = call.body, call.request
    user_agent = request.headers.get("User-Agent")
    request_id = request.get(REQUEST_ID_KEY, "")
    return await call.pool.fetchrow(
        INSERT_FRONTEND_LOG, body["level"], body["component"], body["message"],
        body.get("camera_id"), body.get("extra"),
        user_agent[:USER_AGENT_MAX_LENGTH] if user_agent else None,
        request_id if len(request_id) <= REQUEST_ID_MAX_LENGTH else None,
    )

