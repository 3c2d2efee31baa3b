"""Episodes end to end: batcher, sweeper, fair queue and analyze worker (rule scoring), as the
daemon runs them; one person walking past is one fast-path event and a few follow-ups."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import seed_default_prompt
from hsid.core import metrics
from hsid.core.config import Config
from hsid.core.constants import ANALYSIS_QUEUE
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.pipeline.analyze_worker import AnalyzeWorker
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.orphans import rebatch_orphans
from hsid.pipeline.schedule import FairQueue
from hsid.pipeline.sweeper import BatchSweeper
from tests.support import eventually

CAMERA = "porch"
T0 = datetime(2026, 11, 26, 14, 30, tzinfo=UTC)


@pytest.fixture
def episode_config(config: Config) -> Config:
    return config.with_overrides({
        "batch": {"idle_seconds": 0.4, "window_seconds": 60, "sweep_interval_seconds": 0.05},
        "analyzer": {"max_per_camera_hour": 0},
        "queues": {"retry_base_seconds": 0.01},
    })


@pytest.fixture
async def camera(db: asyncpg.Pool, camera_root: Path) -> str:
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Porch', $2)",
                     CAMERA, str(camera_root / CAMERA))
    await db.execute("INSERT INTO alert_rules (name, severity, object_types, cooldown_seconds) "
                     "VALUES ('person', 'high', $1, 0)", ["person"])
    await seed_default_prompt(db)
    return CAMERA


def _queue(config: Config, redis: aioredis.Redis, keyspace: Keyspace,
           worker: str = "test-analyze") -> FairQueue:
    return FairQueue(redis, ANALYSIS_QUEUE, worker, config.queues, keyspace=keyspace,
                     max_consecutive=config.analyzer.max_consecutive)


async def _run_stages(config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                      keyspace: Keyspace, stopping: asyncio.Event) -> list[asyncio.Task]:
    scorer = RiskScorer(config.analyzer)  # rule-based scoring unless a model is configured
    await scorer.load()
    batcher = Batcher(config.batch, redis, keyspace)
    context = StageContext(config, db, redis, keyspace, stopping=stopping)
    return [asyncio.create_task(stage.run()) for stage in (
        BatchSweeper(context, batcher),
        AnalyzeWorker(context, _queue(config, redis, keyspace), scorer),
    )]


@pytest.fixture
async def pipeline(episode_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                   keyspace: Keyspace, camera: str) -> AsyncIterator[Batcher]:
    """The batch sweeper and analyze worker running; the batcher the detect worker uses."""
    stopping = asyncio.Event()
    tasks = await _run_stages(episode_config, db, redis, keyspace, stopping)
    yield Batcher(episode_config.batch, redis, keyspace)
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def _snapshot(db: asyncpg.Pool, camera_root: Path, n: int,
                    kinds: tuple[str, ...] = ("person",)) -> list[NewDetection]:
    """One stored snapshot's detections (each at 0.95), taken n seconds after T0."""
    found = []
    for kind in kinds:
        found.append(NewDetection(await db.fetchval(
            "INSERT INTO detections (camera_id, file_path, detected_at, object_type, confidence,"
            " bbox_x, bbox_y, bbox_width, bbox_height) VALUES ($1, $2, $3, $4, 0.95, 100, 100,"
            " 200, 400) RETURNING id",
            CAMERA, str(camera_root / CAMERA / f"{n}.jpg"), T0 + timedelta(seconds=n), kind),
            kind, 0.95))
    return found


async def _drained(redis: aioredis.Redis, queue: FairQueue) -> bool:
    return await redis.llen(queue.key) == 0


async def _events(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM events ORDER BY started_at, id")


async def _all_in_events(db: asyncpg.Pool, ids: list[int]) -> list[asyncpg.Record] | None:
    events = await _events(db)
    held = [i for event in events for i in json.loads(event["detection_ids"])]
    return events if sorted(held) == sorted(ids) else None


async def test_a_person_walking_past_is_one_fast_path_event_and_a_few_follow_ups(
    pipeline: Batcher, db: asyncpg.Pool, camera_root: Path,
) -> None:
    ids = []
    for n in range(30):  # 30 snapshots of one person, a short interval apart
        detections = await _snapshot(db, camera_root, n)
        ids += [d.id for d in detections]
        await pipeline.add(CAMERA, detections)
        await asyncio.sleep(0.02)
    events = await eventually(lambda: _all_in_events(db, ids), within=15)
    fast = [event for event in events if event["is_fast_path"]]
    assert len(fast) == 1 and json.loads(fast[0]["detection_ids"]) == [ids[0]]
    assert 1 <= len(events) - 1 <= 3
    held = Counter(i for event in events for i in json.loads(event["detection_ids"]))
    assert set(held.values()) == {1}  # every detection in exactly one event
    # One rule, cooldown 0: it alerts for the fast path, and again only if a follow-up is
    # riskier (the rule scorer counts detections, so 29 snapshots may read as more people).
    levels = ["low", "medium", "high", "critical"]
    alerts = await db.fetch("SELECT a.metadata, e.is_fast_path FROM alerts a "
                            "JOIN events e ON e.id = a.event_id ORDER BY a.created_at")
    assert alerts[0]["is_fast_path"] is True
    alerted = [levels.index(a["metadata"]["risk_level"]) for a in alerts]
    assert alerted == sorted(set(alerted))  # each further alert of the episode escalates
    assert {a["metadata"]["episode_id"] for a in alerts} == {fast[0]["batch_id"]}


async def test_two_people_in_one_image_are_one_event_with_both(
    pipeline: Batcher, db: asyncpg.Pool, camera_root: Path,
) -> None:
    detections = await _snapshot(db, camera_root, 0, ("person", "person"))
    await pipeline.add(CAMERA, detections)
    [event] = await eventually(lambda: _all_in_events(db, [d.id for d in detections]))
    assert event["is_fast_path"] is True
    assert json.loads(event["detection_ids"]) == [d.id for d in detections]
    assert "2 person" in event["summary"]  # the prompt and the rules see both


async def test_the_llm_budget_sends_a_cameras_further_batches_to_the_rules(
    episode_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: str, camera_root: Path, test_models: dict[str, Path],
) -> None:
    config = episode_config.with_overrides({"analyzer": {
        "max_per_camera_hour": 2, "model": str(test_models["llm"])}})
    queue = _queue(config, redis, keyspace)
    ids = []
    for n in range(4):
        [detection] = await _snapshot(db, camera_root, n * 10, ("car",))
        ids.append(detection.id)
        await queue.push({"batch_id": f"b-{n}", "camera_id": CAMERA,
                          "detection_ids": [detection.id]})
    before = metrics.REGISTRY.get_sample_value("hsid_analyses_total",
                                               {"path": "rules-budget"}) or 0
    stopping = asyncio.Event()
    tasks = await _run_stages(config, db, redis, keyspace, stopping)
    try:
        await eventually(lambda: _all_in_events(db, ids))
        [person] = await _snapshot(db, camera_root, 50)  # over budget, then a person comes
        ids.append(person.id)
        await queue.push({"batch_id": "e-1", "camera_id": CAMERA,
                          "detection_ids": [person.id], "episode_id": "e-1",
                          "fast_path": True})
        events = await eventually(lambda: _all_in_events(db, ids))
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    budget = "the camera's LLM budget of 2 analyses an hour was reached"
    over = sorted(event["batch_id"] for event in events if budget in event["reasoning"])
    assert over == ["b-2", "b-3"]  # a fast path still gets the LLM's turn
    assert all(budget not in event["reasoning"] and "not loaded" not in event["reasoning"]
               for event in events if event["batch_id"] not in over)
    assert metrics.REGISTRY.get_sample_value("hsid_analyses_total",
                                             {"path": "rules-budget"}) == before + 2


async def test_a_crash_in_the_middle_of_an_episode_loses_nothing_and_duplicates_nothing(
    episode_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: str, camera_root: Path,
) -> None:
    batcher = Batcher(episode_config.batch, redis, keyspace)
    ids = []
    for n in range(5):
        detections = await _snapshot(db, camera_root, n)
        ids += [d.id for d in detections]
        await batcher.add(CAMERA, detections)
    # The analyzer dies holding the episode's fast-path job.
    dead = _queue(episode_config, redis, keyspace)
    held = await dead.take(1)
    assert held is not None and held.item.fast_path is True
    await asyncio.sleep(0.45)
    assert await batcher.sweep() == 1  # the follow-up is queued meanwhile
    # A re-delivery of the follow-up (a sweeper and an orphan rebatch both got to it).
    [follow_up] = await redis.lrange(dead.key, 0, -1)
    await redis.rpush(dead.key, follow_up)
    stopping = asyncio.Event()
    tasks = await _run_stages(episode_config, db, redis, keyspace, stopping)
    try:
        events = await eventually(lambda: _all_in_events(db, ids))
        await eventually(lambda: _drained(redis, dead))
        assert await rebatch_orphans(db, batcher, episode_config.batch,
                                     T0 - timedelta(hours=1)) == 0
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    assert [event["is_fast_path"] for event in events] == [True, False]
    assert await db.fetchval("SELECT count(*) FROM events") == 2
    assert await redis.llen(dead.processing_key) == 0
