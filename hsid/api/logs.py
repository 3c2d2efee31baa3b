"""Log routes: the logs table filtered, and frontend log records (rate-limited per client)."""

from __future__ import annotations

import time

import asyncpg

from hsid.api.fields import Body, Field, Obj, Shape, Str, out
from hsid.api.middleware import REQUEST_ID_KEY, RateLimited
from hsid.api.queries import TIME_RANGE, Listing, fetch_page, page_of, paged
from hsid.api.routing import ApiRoutes, Call

LOG_COLUMNS = (
    'id, "timestamp", level, component, message, camera_id, event_id, request_id, '
    "detection_id, duration_ms, extra, source, user_agent"
)
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
REQUEST_ID_MAX_LENGTH = 36  # logs.request_id is varchar(36)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SOURCES = ("backend", "frontend")
FIELDS: dict[str, Field] = {
    "level": Str(enum=LEVELS, required=True),
    "message": Str(min_length=1, max_length=10_000, required=True),
    "component": Str(min_length=1, max_length=50, required=True),
    "camera_id": Str(max_length=100, nullable=True),
    "extra": Obj(nullable=True, description="structured context"),
}
LOG = Shape({
    "id": out("integer"),
    "timestamp": out("string", format="date-time"),
    "level": out("string", enum=list(LEVELS)),
    "component": out("string"),
    "message": out("string"),
    "camera_id": out("string", nullable=True),
    "event_id": out("integer", nullable=True),
    "request_id": out("string", nullable=True),
    "detection_id": out("integer", nullable=True),
    "duration_ms": out("integer", nullable=True),
    "extra": out(None),
    "source": out("string", enum=list(SOURCES)),
    "user_agent": out("string", nullable=True),
})

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


@api.get(
    "/api/logs", "List log records, newest first", response=page_of(LOG),
    query=paged({
        "level": Str(enum=LEVELS), "component": Str(max_length=50),
        "camera_id": Str(max_length=100), "source": Str(enum=SOURCES),
        "request_id": Str(max_length=REQUEST_ID_MAX_LENGTH), **TIME_RANGE,
    }),
)
async def list_logs(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_LOGS, call.query)


# Not audited: a frontend's log record is telemetry, not a change anyone makes to hsid.
@api.post("/api/logs", "Record a frontend log record", body=Body(FIELDS), status=201,
          response=LOG, errors=(429,))
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

