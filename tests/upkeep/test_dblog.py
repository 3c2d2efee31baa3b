"""The database log handler: records reach `logs` with their context, and an absent database
never blocks, crashes or loops the logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from hsid.core.config import LoggingConfig
from hsid.core.logging import configure_logging
from hsid.core.metrics import REGISTRY
from hsid.upkeep import dblog
from hsid.upkeep.dblog import DatabaseLogHandler
from tests.conftest import free_port
from tests.support import eventually

SELECT_LOGS = """
SELECT level, component, message, camera_id, event_id, request_id, detection_id, duration_ms,
       extra, source
FROM logs ORDER BY id
"""

log = structlog.get_logger("hsid.pipeline.example")


@pytest.fixture
def stdlib_logging() -> Iterator[None]:
    """structlog through the standard library, as the daemon configures it."""
    root = logging.getLogger()
    level = root.level
    configure_logging("debug")
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if h.get_name() == "hsid-console"]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def install(stdlib_logging: None) -> Iterator[Callable[..., DatabaseLogHandler]]:
    """Installs a handler on the root logger (buffer size as asked) and removes it after."""

    def make(buffer: int = 1000, level: str = "info") -> DatabaseLogHandler:
        return dblog.install(LoggingConfig(db_level=level, db_buffer_records=buffer))

    yield make
    dblog.uninstall()


@pytest.fixture
async def dead_pool() -> AsyncIterator[asyncpg.Pool]:
    """A pool for a port nothing listens on (min_size=0, so creating it succeeds)."""
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                                     min_size=0, max_size=1, timeout=2)
    yield pool
    await pool.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dblog, "FLUSH_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(dblog, "RETRY_SECONDS", 0.05)


def dropped_total() -> float:
    return REGISTRY.get_sample_value("hsid_db_log_records_dropped_total") or 0.0


async def wait_for_rows(db: asyncpg.Pool, count: int) -> list[asyncpg.Record]:
    async def enough() -> bool:
        return await db.fetchval("SELECT count(*) FROM logs") >= count

    await eventually(enough, within=5.0, what=f"{count} log row(s)")
    return await db.fetch(SELECT_LOGS)


@contextlib.asynccontextmanager
async def flushing(handler: DatabaseLogHandler,
                   pool_getter: Callable[[], asyncpg.Pool | None]) -> AsyncIterator[None]:
    task = asyncio.create_task(handler.flush_loop(pool_getter))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_records_land_with_their_context_fields(install, db: asyncpg.Pool) -> None:
    handler = install()
    async with flushing(handler, lambda: db):
        with structlog.contextvars.bound_contextvars(camera_id="front_door", request_id="r-1"):
            log.info("image_stored", detection_id=5, event_id=7, duration_ms=12.6,
                     size=3, path=Path("/srv/a.jpg"))
        log.debug("below_the_database_level")
        logging.getLogger("aiohttp.server").warning("not_an_hsid_logger")

        rows = await wait_for_rows(db, 1)

    assert len(rows) == 1
    assert dict(rows[0]) == {
        "level": "INFO", "component": "hsid.pipeline.example", "message": "image_stored",
        "camera_id": "front_door", "event_id": 7, "request_id": "r-1", "detection_id": 5,
        "duration_ms": 13, "extra": {"size": 3, "path": "/srv/a.jpg"}, "source": "backend",
    }


async def test_values_that_do_not_fit_their_column_go_to_extra(install, db: asyncpg.Pool) -> None:
    handler = install()
    try:
        raise ValueError("broken image")
    except ValueError:
        log.exception("image_rejected", camera_id="c" * 101, event_id="7", ratio=float("nan"))

    assert await handler.drain(db)

    row = (await db.fetch(SELECT_LOGS))[0]
    assert (row["level"], row["camera_id"], row["event_id"]) == ("ERROR", None, None)
    assert row["extra"]["camera_id"] == "c" * 101 and row["extra"]["event_id"] == "7"
    assert row["extra"]["ratio"] == "nan"
    assert "ValueError: broken image" in row["extra"]["exception"]


async def test_database_down_never_blocks_drops_when_full_and_recovers(
    install, db: asyncpg.Pool, dead_pool: asyncpg.Pool
) -> None:
    handler = install(buffer=10)
    before = dropped_total()

    started = time.monotonic()
    for i in range(25):
        await asyncio.to_thread(log.info, "from_a_thread", n=i)  # emit runs off the loop too
    assert not await handler.drain(dead_pool)
    assert time.monotonic() - started < 2.0

    assert handler.pending() == 10
    assert handler.dropped == 15
    assert dropped_total() - before == 15
    assert await handler.drain(db), "the records waited and go in once the database is back"
    assert [r["extra"]["n"] for r in await db.fetch(SELECT_LOGS)] == list(range(10))
    assert handler.pending() == 0


async def test_flush_loop_waits_for_a_pool_and_then_writes(
    install, db: asyncpg.Pool, fast_retries: None
) -> None:
    handler = install()
    current: dict[str, asyncpg.Pool | None] = {"pool": None}
    closed = await asyncpg.create_pool(dsn=None, min_size=0, host="127.0.0.1")
    await closed.close()

    async with flushing(handler, lambda: current["pool"]):
        log.info("before_the_database")
        await asyncio.sleep(0.2)
        current["pool"] = closed
        await asyncio.sleep(0.2)
        assert handler.pending() == 1
        current["pool"] = db
        rows = await wait_for_rows(db, 1)

    assert rows[0]["message"] == "before_the_database"
    assert handler.dropped == 0


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    install, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dblog, "FLUSH_INTERVAL_SECONDS", 60.0)
    handler = install()

    async with flushing(handler, lambda: db):
        await asyncio.sleep(0)  # the loop is waiting now
        for i in range(dblog.FLUSH_BATCH_RECORDS):
            log.info("burst", n=i)
        rows = await wait_for_rows(db, dblog.FLUSH_BATCH_RECORDS)

    assert len(rows) == dblog.FLUSH_BATCH_RECORDS


async def test_logging_while_flushing_never_comes_back(install, database_url: str,
                                                       db: asyncpg.Pool) -> None:
    """What is logged during a flush (here: by the pool's connection set-up) and what the
    handler's own module logs stay out of the table, so logging can never feed itself."""
    opened: list[asyncpg.Connection] = []

    async def init(conn: asyncpg.Connection) -> None:
        opened.append(conn)
        structlog.get_logger("hsid.core.db").info("connection_opened")

    handler = install()
    talking_pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1, init=init)
    try:
        log.info("the_only_record")
        structlog.get_logger("hsid.upkeep.dblog").warning("about_the_handler_itself")
        assert await handler.drain(talking_pool)
    finally:
        await talking_pool.close()

    assert len(opened) == 1, "the pool opened its connection during the flush"
    assert [r["message"] for r in await db.fetch(SELECT_LOGS)] == ["the_only_record"]
    assert handler.pending() == 0
