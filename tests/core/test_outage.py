"""Store outages: a job and a stage wait out a stopped PostgreSQL, spending no attempts or
crash budget, and the outage is logged once each way. A private PostgreSQL is stopped and
started again for real; the shared stores are never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core import constants
from hsid.core.config import Config, QueueConfig
from hsid.core.constants import DETECTION_QUEUE
from hsid.core.db import create_pool
from hsid.core.errors import TransientError
from hsid.core.health import StageState
from hsid.core.keyspace import Keyspace
from hsid.core.outage import StoreWatch
from hsid.core.queues import Job, ReliableQueue, process_with_retries
from hsid.core.runtime import Runtime
from hsid.daemon.app import supervise
from hsid.embedded import EmbeddedPostgres
from hsid.embedded.processes import find_postgres_bin
from tests.support import eventually

pytestmark = pytest.mark.skipif(find_postgres_bin(None) is None,
                                reason="no PostgreSQL server binaries on this machine")

FAST = QueueConfig(max_attempts=2, retry_base_seconds=0.01)


@pytest.fixture
async def private_pg(embedded_dir: Path) -> AsyncIterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(embedded_dir / "pg")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def pool(private_pg: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(Config().database, private_pg.dsn)
    try:
        yield pool
    finally:
        await pool.close()


def events(logs: list[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


async def test_connection_errors_are_outages_and_other_errors_are_faults(
    pool: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    stores = StoreWatch(pool, redis)
    try:
        raise TransientError("storing failed") from ConnectionResetError("peer went away")
    except TransientError as err:
        assert await stores.is_outage(err)
    assert not await stores.is_outage(ValueError("a bug"))
    # A store error while both stores answer is the job's own fault (a bad query, say).
    assert not await stores.is_outage(asyncpg.UndefinedTableError("no such table"))
    assert await stores.down() == {}


async def test_job_waits_out_a_database_outage_without_spending_attempts(
    private_pg: EmbeddedPostgres, pool: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = ReliableQueue(redis, DETECTION_QUEUE, "w1", FAST, keyspace=keyspace,
                          stores=StoreWatch(pool, redis))
    await queue.push({"camera_id": "gate", "file_path": "/cams/gate/1.jpg"})
    job = await queue.take(1)
    assert job is not None
    calls = 0

    async def store(_: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await private_pg.stop()  # the database goes away under the job
        try:
            await pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            raise TransientError(f"storing failed: {err}") from err

    with capture_logs() as logs:
        processing = asyncio.create_task(process_with_retries(queue, job, store, FAST))
        await eventually(lambda: events(logs, "store_outage"), within=10, what="outage seen")
        await asyncio.sleep(1.5)  # several probes, far more than max_attempts' worth of time
        assert not processing.done()
        await private_pg.start()
        assert await asyncio.wait_for(processing, 20) is True

    assert await redis.llen(queue.dlq_key) == 0
    assert await redis.llen(queue.processing_key) == 0
    assert [e["store"] for e in events(logs, "store_outage")] == ["database"]
    assert [e["store"] for e in events(logs, "store_recovered")] == ["database"]
    assert not events(logs, "job_failed")


class DatabaseStage:
    """Queries the database once a turn until the daemon stops; counts its starts."""

    def __init__(self, runtime: Runtime, starts: list[int]) -> None:
        self._runtime, self._starts = runtime, starts

    async def run(self) -> None:
        self._starts.append(1)
        pool = self._runtime.require_pool()
        while not self._runtime.stopping.is_set():
            await pool.fetchval("SELECT 1")
            await asyncio.sleep(0.05)


async def test_stage_waits_for_the_database_and_resumes_with_no_crash_counted(
    private_pg: EmbeddedPostgres, pool: asyncpg.Pool, redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "RESTART_MAX_CRASHES", 1)  # one real crash would end it
    runtime = Runtime(config=Config(), stages=frozenset(), pool=pool, redis=redis)
    runtime.stores = StoreWatch(pool, redis)
    starts: list[int] = []
    task = asyncio.create_task(supervise("db_user", lambda: DatabaseStage(runtime, starts),
                                         runtime))
    await eventually(lambda: starts, what="stage started")
    await private_pg.stop()
    status = runtime.health.stages["db_user"]
    await eventually(lambda: status.state is StageState.WAITING, within=10, what="waiting")
    assert not runtime.health.stages_ok()  # health answers 503 meanwhile
    await private_pg.start()
    await eventually(lambda: len(starts) == 2 and status.state is StageState.RUNNING,
                     within=20, what="stage resumed")

    assert not runtime.stopping.is_set() and not runtime.given_up.is_set()
    assert status.restarts == 0
    runtime.stopping.set()
    await asyncio.wait_for(task, 5)
