"""Orphan detections: after Redis comes back empty, the detections that belong to no event
are batched again by the batch sweeper and end up in exactly one event each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import seed_default_prompt
from hsid.core import constants
from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.pipeline.analyze_worker import AnalyzeWorker
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.sweeper import BatchSweeper
from tests.support import eventually

CAMERA = "gate"


@pytest.fixture
def batch_config(config: Config) -> Config:
    """Batches that stay open through the test unless something closes them."""
    return config.with_overrides({"batch": {"window_seconds": 600, "idle_seconds": 600}})


@pytest.fixture
async def pipeline(batch_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                   keyspace: Keyspace, monkeypatch: pytest.MonkeyPatch,
                   ) -> AsyncIterator[Batcher]:
    """The batch sweeper and an analyze worker (rule-based), running; yields the batcher."""
    monkeypatch.setattr(constants, "RECONCILE_CHECK_SECONDS", 0.2)
    # Redis has been up all along: its state was reconciled before this test began.
    await redis.set(keyspace.key(f"{constants.RECONCILED_PREFIX}batches"), "1")
    await seed_default_prompt(db)
    scorer = RiskScorer(batch_config.analyzer)
    await scorer.load()
    batcher = Batcher(batch_config.batch, redis, keyspace)
    queue = ReliableQueue(redis, "analysis_queue", "test-orphans", batch_config.queues,
                          keyspace=keyspace)
    stopping = asyncio.Event()
    context = StageContext(batch_config, db, redis, keyspace, stopping=stopping)
    tasks = [asyncio.create_task(BatchSweeper(context, batcher).run()),
             asyncio.create_task(AnalyzeWorker(context, queue, scorer).run())]
    yield batcher
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def _detect(db: asyncpg.Pool, at: datetime, object_type: str = "car") -> NewDetection:
    detection_id = await db.fetchval(
        "INSERT INTO detections (camera_id, file_path, detected_at, object_type, confidence)"
        " VALUES ($1, $2, $3, $4, 0.6) RETURNING id", CAMERA, f"/nowhere/{at:%H%M%S}.jpg", at,
        object_type)
    return NewDetection(detection_id, object_type, 0.6)


async def _events(db: asyncpg.Pool) -> list[list[int]]:
    return sorted(json.loads(row["detection_ids"])
                  for row in await db.fetch("SELECT detection_ids FROM events"))


async def test_orphans_after_a_redis_flush_are_batched_again_into_exactly_one_event(
    pipeline: Batcher, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path,
) -> None:
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Gate', $2)",
                     CAMERA, str(camera_root / CAMERA))
    now = datetime.now(UTC)
    first = await _detect(db, now - timedelta(minutes=30, seconds=2))
    second = await _detect(db, now - timedelta(minutes=30, seconds=1))
    later = await _detect(db, now - timedelta(minutes=1))  # idle for longer than idle_seconds
    stale = await _detect(db, now - timedelta(hours=48))  # beyond the look-back
    analysed = await _detect(db, now - timedelta(minutes=1, seconds=1))
    await db.execute("INSERT INTO events (batch_id, camera_id, started_at, ended_at,"
                     " detection_ids) VALUES ('done', $1, $2, $2, $3)",
                     CAMERA, now - timedelta(minutes=1, seconds=1), json.dumps([analysed.id]))
    await pipeline.add(CAMERA, [first, second, later])
    await asyncio.sleep(0.5)  # the marker is there: nothing is batched again
    assert await _events(db) == [[analysed.id]]

    with capture_logs() as logs:
        await redis.flushdb()  # Redis restarted empty: the open batch is gone
        await eventually(lambda: _events_when(db, 3), what="the orphans' events")
        await asyncio.sleep(0.5)  # and nothing more comes
    assert await _events(db) == [[first.id, second.id], [later.id], [analysed.id]]
    assert stale.id not in [i for ids in await _events(db) for i in ids]
    [rebatched] = [e for e in logs if e["event"] == "orphans_rebatched"]
    assert (rebatched["camera"], rebatched["count"]) == (CAMERA, 3)


async def _events_when(db: asyncpg.Pool, count: int) -> list[list[int]] | None:
    events = await _events(db)
    return events if len(events) >= count else None


async def test_orphans_of_a_backlog_are_cut_by_capture_time_and_their_events_found(
    pipeline: Batcher, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path,
) -> None:
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Gate', $2)",
                     CAMERA, str(camera_root / CAMERA))
    now = datetime.now(UTC)

    async def backlog(hours_ago: float) -> int:  # processed just now, taken hours ago
        return await db.fetchval(
            "INSERT INTO detections (camera_id, file_path, detected_at, captured_at, "
            "object_type, confidence) VALUES ($1, '/x.jpg', $2, $3, 'car', 0.6) RETURNING id",
            CAMERA, now - timedelta(seconds=5), now - timedelta(hours=hours_ago))

    night = [await backlog(31), await backlog(31 - 1 / 3600)]  # a second apart
    dawn = await backlog(28)
    analysed = await backlog(30)
    # Its event is dated by capture time, 30 hours ago: before the 24 h look-back began.
    await db.execute("INSERT INTO events (batch_id, camera_id, started_at, ended_at,"
                     " detection_ids) VALUES ('done', $1, $2, $2, $3)",
                     CAMERA, now - timedelta(hours=30), json.dumps([analysed]))

    with capture_logs() as logs:
        await redis.flushdb()  # Redis restarted empty: nothing of the backlog was batched
        await eventually(lambda: _events_when(db, 3), what="the backlog's events")
        await asyncio.sleep(0.5)

    assert await _events(db) == sorted([night, [dawn], [analysed]])
    [rebatched] = [e for e in logs if e["event"] == "orphans_rebatched"]
    assert rebatched["count"] == 3  # the analysed one was found in its event
