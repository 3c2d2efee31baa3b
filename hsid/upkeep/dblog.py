"""Database log handler: hsid's log records into the `logs` table through a bounded buffer.

Logging must never block or break the pipeline, so `emit` only appends to an in-memory
buffer (from any thread) and a flush task writes the buffer in batches. When the database
is away the records wait in the buffer; when the buffer is full new records are dropped
and counted. Nothing this module does is itself written to the table: its own records,
and every record logged while a flush runs, are left to the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from hsid.core import metrics
from hsid.core.config import LoggingConfig
from hsid.core.runtime import pause

log = structlog.get_logger(__name__)

HANDLER_NAME = "hsid-database"
LOGGER_PREFIX = "hsid"  # only hsid's own loggers; libraries stay in the journal
FLUSH_INTERVAL_SECONDS = 1.0
FLUSH_BATCH_RECORDS = 500  # one INSERT batch; this many waiting records also wake the flusher
RETRY_SECONDS = 5.0  # between attempts while the database is away
FINAL_FLUSH_SECONDS = 3.0  # how long shutdown waits for the last records
COMPONENT_MAX = 50  # logs.component is varchar(50)
INT32_MAX = 2**31 - 1

INSERT_LOGS = """
INSERT INTO logs ("timestamp", level, component, message, camera_id, event_id, request_id,
                  detection_id, duration_ms, extra, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'backend')
"""

# structlog's bookkeeping keys, already in their own columns or meaningless in the table.
BOOKKEEPING_KEYS = frozenset(
    {"event", "logger", "level", "timestamp", "_record", "_from_structlog"})
STANDARD_LEVELS = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (10, "DEBUG"))

# Context keys with a column of their own; a value that does not fit goes to `extra`.
STRING_COLUMNS = {"camera_id": 100, "request_id": 36}
INTEGER_COLUMNS: dict[str, tuple[type[int] | type[float], ...]] = {
    "event_id": (int,), "detection_id": (int,), "duration_ms": (int, float),
}

# The database is away (or not connected yet): keep the records and try again later.
OUTAGE_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                 asyncpg.OperatorInterventionError)

# True while `drain` runs, in its task's context only: whatever is logged from there (by
# asyncpg's connection set-up, say) never comes back here.
_flushing: contextvars.ContextVar[bool] = contextvars.ContextVar("hsid_dblog_flushing",
                                                                 default=False)

LogRow = tuple[Any, ...]
PoolGetter = Callable[[], asyncpg.Pool | None]


class DatabaseLogHandler(logging.Handler):
    """A stdlib handler for the root logger that buffers hsid's records for `flush_loop`.

    `dropped` counts records that never reached the table (buffer full, or a batch the
    database refused); metrics.DB_LOG_DROPPED counts the same.
    """

    def __init__(self, config: LoggingConfig) -> None:
        super().__init__(level=config.db_level.upper())
        self.set_name(HANDLER_NAME)
        self.dropped = 0
        self._capacity = config.db_buffer_records
        self._buffer: deque[LogRow] = deque()
        self._buffer_lock = threading.Lock()  # emit runs in any thread; the flusher on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._wake_pending = False
        self._outage = False

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        ours = name == LOGGER_PREFIX or name.startswith(LOGGER_PREFIX + ".")
        return ours and name != __name__ and not _flushing.get() and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Append without waiting; never raises (logging errors must not reach the caller)."""
        try:
            row = _row(record)
        except Exception:
            self._drop(1)
            return
        wake = False
        with self._buffer_lock:
            accepted = len(self._buffer) < self._capacity
            if accepted:
                self._buffer.append(row)
                # The first record wakes an idle flusher, a full batch a gathering one.
                wake = len(self._buffer) in (1, FLUSH_BATCH_RECORDS) and not self._wake_pending
                self._wake_pending = self._wake_pending or wake
        if not accepted:
            self._drop(1)
        elif wake:
            self._wake_flusher()

    def pending(self) -> int:
        """Records waiting for the database."""
        return len(self._buffer)

    async def flush_loop(self, pool_getter: PoolGetter) -> None:
        """Write the buffer FLUSH_INTERVAL_SECONDS after its first record (sooner when a
        batch is waiting) until cancelled, then make one last bounded attempt. With
        nothing buffered it sleeps until a record comes, so an idle daemon never wakes it.
        `pool_getter` is asked each time, so the loop can start before the database is
        connected."""
        self._loop, self._wakeup = asyncio.get_running_loop(), asyncio.Event()
        try:
            while True:
                if not self.pending():
                    await self._wakeup.wait()
                    self._wakeup.clear()
                    with self._buffer_lock:
                        self._wake_pending = False
                if self.pending() < FLUSH_BATCH_RECORDS:
                    await pause(self._wakeup, FLUSH_INTERVAL_SECONDS)
                    self._wakeup.clear()
                if not await self.drain(pool_getter()):
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            self._loop = self._wakeup = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(pool_getter()), FINAL_FLUSH_SECONDS)

    async def drain(self, pool: asyncpg.Pool | None) -> bool:
        """Write everything buffered; False when the database is away (records kept).

        A batch the database refuses for any other reason is dropped and counted, so one
        bad record can never wedge the buffer.
        """
        token = _flushing.set(True)
        try:
            while batch := self._peek(FLUSH_BATCH_RECORDS):
                if pool is None:
                    return False
                try:
                    await pool.executemany(INSERT_LOGS, batch)
                except Exception as err:
                    if _is_outage(err):
                        self._note_outage(err)
                        return False
                    self._discard(len(batch), refused=True)
                    log.warning("db_log_batch_refused", records=len(batch), error=repr(err))
                    continue
                self._discard(len(batch))
            self._note_recovery()
            return True
        finally:
            _flushing.reset(token)

    def _peek(self, count: int) -> list[LogRow]:
        with self._buffer_lock:
            self._wake_pending = False
            return list(itertools.islice(self._buffer, count))

    def _discard(self, count: int, refused: bool = False) -> None:
        """Remove the first `count` records: only the flusher removes, so they are the
        ones `_peek` returned."""
        with self._buffer_lock:
            for _ in range(count):
                self._buffer.popleft()
        if refused:
            self._drop(count)

    def _drop(self, count: int) -> None:
        self.dropped += count
        metrics.DB_LOG_DROPPED.inc(count)

    def _wake_flusher(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: the next tick
                loop.call_soon_threadsafe(wakeup.set)

    def _note_outage(self, err: BaseException) -> None:
        if not self._outage:
            log.warning("db_log_unavailable", error=str(err) or type(err).__name__,
                        waiting=self.pending(), dropped=self.dropped)
        self._outage = True

    def _note_recovery(self) -> None:
        if self._outage:
            log.info("db_log_resumed", dropped=self.dropped)
        self._outage = False


def install(config: LoggingConfig) -> DatabaseLogHandler:
    """Attach a new handler to the root logger (replacing an earlier one) and return it.

    Records below the root logger's level never reach any handler, so a db_level lower
    than logging.level has no effect.
    """
    uninstall()
    handler = DatabaseLogHandler(config)
    logging.getLogger().addHandler(handler)
    return handler


def uninstall() -> None:
    """Detach the handler from the root logger; idempotent."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)


def _row(record: logging.LogRecord) -> LogRow:
    """The `logs` row for a record: structlog's event dict (record.msg) or a plain message."""
    if isinstance(record.msg, dict):
        fields = dict(record.msg)
        message = fields.get("event", "")
    else:
        fields, message = {}, record.getMessage()
    extra = {k: v for k, v in fields.items() if k not in BOOKKEEPING_KEYS}
    exc_info = extra.pop("exc_info", None) or record.exc_info
    if exc_info:
        extra["exception"] = _format_exception(exc_info)
    columns = [_string_column(extra, k, n) for k, n in STRING_COLUMNS.items()]
    numbers = {k: _integer_column(extra, k, t) for k, t in INTEGER_COLUMNS.items()}
    return (
        datetime.fromtimestamp(record.created, UTC),
        next((name for number, name in STANDARD_LEVELS if record.levelno >= number), "DEBUG"),
        record.name[:COMPONENT_MAX],
        _text(message),
        columns[0],
        numbers["event_id"],
        columns[1],
        numbers["detection_id"],
        numbers["duration_ms"],
        {k: _jsonable(v) for k, v in extra.items()} or None,
    )


def _is_outage(err: Exception) -> bool:
    # asyncpg raises DataError, an InterfaceError that is also a ValueError, for a row it
    # cannot encode: that is a bad record, not an outage.
    return isinstance(err, OUTAGE_ERRORS) and not isinstance(err, ValueError)


def _text(value: object) -> str:
    return str(value).replace("\x00", "\\0")  # PostgreSQL text cannot hold NUL


def _string_column(extra: dict[str, Any], key: str, limit: int) -> str | None:
    value = extra.get(key)
    if isinstance(value, str) and len(value) <= limit and "\x00" not in value:
        return extra.pop(key)
    return None


def _integer_column(extra: dict[str, Any], key: str,
                    types: tuple[type[int] | type[float], ...]) -> int | None:
    value = extra.get(key)
    if isinstance(value, bool) or not isinstance(value, types):
        return None
    if value != value or abs(value) > INT32_MAX:  # NaN, or too big for an integer column
        return None
    extra.pop(key)
    return round(value)


def _jsonable(value: Any) -> Any:
    """`value` itself when it survives JSON (as the pool's codec will write it), else text."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return _text(value)
    return value


def _format_exception(exc_info: Any) -> str:
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return ""
    return "".join(traceback.format_exception(*exc_info)).rstrip()
