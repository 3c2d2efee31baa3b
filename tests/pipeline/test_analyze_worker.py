"""Analyze worker: events rows, the published message, idempotency, fast path, fallback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from hsid.config import Config
from hsid.pipeline.analyze_worker import AnalyzeWorker
from hsid.pipeline.analyzer import RiskScorer
from hsid.pipeline.prompts import seed_default_prompt
from hsid.queues import ReliableQueue
from hsid.services.zones import Zone, contains, zones_of_box
from tests.support import eventually

CAMERA = "drive"
T0 = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)


@pytest.fixture
async def seeded(db: asyncpg.Pool, camera_root: Path) -> list[int]:
    """A camera with three detections: a person at 0.95, a car and a person at 0.7."""
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Driveway', $2)",
                     CAMERA, str(camera_root / CAMERA))
    await seed_default_prompt(db)
    ids = []
    for n, (kind, conf) in enumerate([("person", 0.95), ("car", 0.6), ("person", 0.7)]):
        ids.append(await db.fetchval(
            "INSERT INTO detections (camera_id, file_path, detected_at, object_type, confidence,"
            " bbox_x, bbox_y, bbox_width, bbox_height) VALUES ($1, $2, $3, $4, $5, 100, 100,"
            " 200, 400) RETURNING id",
            CAMERA, str(camera_root / CAMERA / f"{n}.jpg"), T0 + timedelta(seconds=n), kind,
            conf))
    return ids


@pytest.fixture
async def analysis(config: Config, db: asyncpg.Pool, redis: aioredis.Redis
                   ) -> AsyncIterator[ReliableQueue]:
    scorer = RiskScorer(config.analyzer)  # no model configured: rule-based scoring
    await scorer.load()
    queue = ReliableQueue(redis, "analysis_queue", "test-analyze", config.queues)
    stopping = asyncio.Event()
    task = asyncio.create_task(
        AnalyzeWorker(config, db, redis, queue, scorer, stopping).run())
    yield queue
    stopping.set()
    await asyncio.wait_for(task, 10)


async def test_batch_becomes_one_event_with_the_reference_message(
    analysis: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, seeded: list[int],
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe("security_events")
    await analysis.push({"batch_id": "b-1", "camera_id": CAMERA,
                         "detection_ids": seeded[1:]})
    event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))
    assert event["batch_id"] == "b-1"
    assert event["camera_id"] == CAMERA
    assert json.loads(event["detection_ids"]) == seeded[1:]
    assert event["started_at"] == T0 + timedelta(seconds=1)
    assert event["ended_at"] == T0 + timedelta(seconds=2)
    assert event["is_fast_path"] is False
    assert 0 <= event["risk_score"] <= 100
    assert "the LLM was not used (no analyzer model configured)" in event["reasoning"]
    message = await eventually(lambda: pubsub.get_message(ignore_subscribe_messages=True,
                                                          timeout=0.1))
    body = json.loads(message["data"])
    assert body["type"] == "event"
    assert set(body["data"]) == {"id", "event_id", "batch_id", "camera_id", "risk_score",
                                 "risk_level", "summary", "started_at"}
    assert body["data"]["id"] == body["data"]["event_id"] == event["id"]
    assert datetime.fromisoformat(body["data"]["started_at"]) == event["started_at"]
    await pubsub.aclose()


async def test_risk_level_follows_the_score_thresholds(
    analysis: ReliableQueue, db: asyncpg.Pool, seeded: list[int],
) -> None:
    await analysis.push({"batch_id": "b-2", "camera_id": CAMERA, "detection_ids": seeded})
    event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))
    score = event["risk_score"]
    expected = ("critical" if score >= 85 else "high" if score >= 60
                else "medium" if score >= 30 else "low")
    assert event["risk_level"] == expected


async def test_same_batch_twice_gives_one_event(
    analysis: ReliableQueue, db: asyncpg.Pool, seeded: list[int],
) -> None:
    item = {"batch_id": "b-3", "camera_id": CAMERA, "detection_ids": seeded[:1]}
    await analysis.push(item)
    await analysis.push(item)
    await analysis.push({"batch_id": "b-4", "camera_id": CAMERA, "detection_ids": seeded[1:2]})
    await eventually(lambda: db.fetchval("SELECT count(*) FROM events WHERE batch_id = 'b-4'"))
    assert await db.fetchval("SELECT count(*) FROM events WHERE batch_id = 'b-3'") == 1


async def test_single_qualifying_detection_is_a_fast_path_event(
    analysis: ReliableQueue, db: asyncpg.Pool, seeded: list[int],
) -> None:
    await analysis.push({"batch_id": "fast", "camera_id": CAMERA, "detection_ids": seeded[:1]})
    await analysis.push({"batch_id": "slow", "camera_id": CAMERA, "detection_ids": seeded[2:]})
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM events"))
    flags = dict(await db.fetch("SELECT batch_id, is_fast_path FROM events"))
    assert flags == {"fast": True, "slow": False}


async def test_unusable_items_go_to_the_dlq(
    analysis: ReliableQueue, redis: aioredis.Redis, seeded: list[int],
) -> None:
    await analysis.push({"batch_id": "x", "camera_id": CAMERA, "detection_ids": []})
    await analysis.push({"batch_id": "y", "camera_id": CAMERA, "detection_ids": [999999]})
    raws = await eventually(lambda: _at_least(redis, "dlq:analysis_queue", 2))
    errors = [json.loads(raw)["error"] for raw in raws]
    assert any("non-empty" in e for e in errors)
    assert any("exist" in e for e in errors)


async def _at_least(redis: aioredis.Redis, key: str, count: int) -> list[bytes] | None:
    raws = await redis.lrange(key, 0, -1)
    return raws if len(raws) >= count else None


def test_zones_hold_the_bottom_centre_of_a_box() -> None:
    porch = Zone("z1", "porch", "entry_point", ((0.0, 0.5), (0.5, 1.0)), "rectangle")
    lawn = Zone("z2", "lawn", "yard", ((0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0)),
                "polygon")
    assert contains(porch, 0.25, 0.75) and not contains(porch, 0.75, 0.75)
    assert contains(lawn, 0.75, 0.75) and not contains(lawn, 0.25, 0.75)
    # A 200x400 box at (100, 100) in 1000x1000 stands at (0.2, 0.5): on the porch's edge.
    assert zones_of_box([porch, lawn], (100, 100, 200, 400), 1000, 1000) == [porch]
    assert zones_of_box([porch, lawn], (700, 100, 100, 700), 1000, 1000) == [lawn]
