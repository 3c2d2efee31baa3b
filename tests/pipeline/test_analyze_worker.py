"""Analyze worker: events rows, the published message, idempotency, fast path, fallback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.analysis.assessment import time_of_day
from hsid.analysis.llm import build_prompt
from hsid.analysis.prompts import seed_default_prompt
from hsid.cameras.zones import Zone, contains, zones_of_box
from hsid.core import metrics
from hsid.core.config import Config
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.pipeline.analyze_worker import LOCK_CAMERA_EVENTS, batch_context
from tests.conftest import running_analyzer
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


async def test_batch_becomes_one_event_with_the_reference_message(
    analysis: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    seeded: list[int],
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keyspace.channel("security_events"))
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
    analysis: ReliableQueue, redis: aioredis.Redis, keyspace: Keyspace, seeded: list[int],
) -> None:
    # A malformed item cannot be pushed through the queue: it is written as a foreign
    # producer would, and the worker's queue dead-letters it with its reason.
    await redis.rpush(keyspace.queue("analysis_queue"),
                      '{"batch_id":"x","camera_id":"' + CAMERA + '","detection_ids":[]}',
                      '{"batch_id":"z","camera_id":"' + CAMERA + '","detection_ids":[true]}')
    await analysis.push({"batch_id": "y", "camera_id": CAMERA, "detection_ids": [999999]})
    raws = await eventually(lambda: _at_least(redis, keyspace.dlq("analysis_queue"), 3))
    errors = [json.loads(raw)["error"] for raw in raws]
    assert errors[:2] == [
        "malformed queue item: detection_ids: List should have at least 1 item after "
        "validation, not 0",
        "malformed queue item: detection_ids.0: Input should be a valid integer"]
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


WAITING_FOR_ADVISORY_LOCKS = """
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def _lock_waiters(db: asyncpg.Pool, count: int) -> bool:
    return await db.fetchval(WAITING_FOR_ADVISORY_LOCKS) == count


async def _events_holding(db: asyncpg.Pool) -> dict[str, list[int]]:
    return {row["batch_id"]: json.loads(row["detection_ids"])
            for row in await db.fetch("SELECT batch_id, detection_ids FROM events")}


async def test_a_detection_already_in_an_event_is_not_included_again(
    analysis: ReliableQueue, db: asyncpg.Pool, seeded: list[int],
) -> None:
    await analysis.push({"batch_id": "first", "camera_id": CAMERA, "detection_ids": seeded[:2]})
    await eventually(lambda: db.fetchval("SELECT 1 FROM events WHERE batch_id = 'first'"))
    with capture_logs() as logs:
        await analysis.push({"batch_id": "again", "camera_id": CAMERA,
                             "detection_ids": seeded[:1]})
        await analysis.push({"batch_id": "overlap", "camera_id": CAMERA,
                             "detection_ids": seeded})
        await eventually(lambda: db.fetchval("SELECT 1 FROM events WHERE batch_id = 'overlap'"))
    assert await _events_holding(db) == {"first": seeded[:2], "overlap": seeded[2:]}
    covered = [e for e in logs if e["event"] == "batch_already_covered"]
    assert [e["detection_ids"] for e in covered] == [seeded[:1]]  # the "again" batch


async def test_two_analyzers_sharing_a_detection_give_one_event_holding_it(
    analysis: ReliableQueue, config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
    keyspace: Keyspace, seeded: list[int],
) -> None:
    # Holding the camera's event lock lets both analyzers get as far as the insert, each
    # having found the shared detection in no event; then they take turns.
    with capture_logs() as logs:
        async with running_analyzer(config, db, redis, keyspace, "test-analyze-2"):
            async with db.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_CAMERA_EVENTS, CAMERA)
                await analysis.push({"batch_id": "b-1", "camera_id": CAMERA,
                                     "detection_ids": seeded[:2]})
                await analysis.push({"batch_id": "b-2", "camera_id": CAMERA,
                                     "detection_ids": seeded[1:]})
                await eventually(lambda: _lock_waiters(db, 2),
                                 what="both analyzers waiting for the lock")
            await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM events"))
    held = sorted(i for ids in (await _events_holding(db)).values() for i in ids)
    assert held == seeded  # each detection in exactly one event
    assert [e["event"] for e in logs].count("detections_taken_meanwhile") == 1


async def test_a_batch_that_crashed_the_daemon_twice_is_scored_by_the_rules(
    analysis: ReliableQueue, db: asyncpg.Pool, seeded: list[int],
) -> None:
    sample = ("hsid_llm_fallbacks_total", {"reason": "crashed_daemon"})
    before = metrics.REGISTRY.get_sample_value(*sample) or 0
    await analysis.push({"batch_id": "poison", "camera_id": CAMERA,
                         "detection_ids": seeded, "crash_count": 2})
    event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))
    assert json.loads(event["detection_ids"]) == seeded
    assert ("the LLM was not used (the LLM analysis crashed the daemon twice on this batch)"
            in event["reasoning"])
    assert metrics.REGISTRY.get_sample_value(*sample) == before + 1


@pytest.fixture
def server_in_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's own clock in UTC (TZ=UTC), as many servers run, whatever this machine's."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_a_server_in_utc_sees_the_houses_afternoon_as_afternoon(
    server_in_utc: None, config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
    keyspace: Keyspace,
) -> None:
    la = ZoneInfo("America/Los_Angeles")
    house = config.with_overrides({"site": {"timezone": "America/Los_Angeles"}})
    afternoon = datetime(2026, 11, 24, 15, 30, tzinfo=la)  # a Tuesday; 23:30 UTC
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Driveway', '/x')",
                     CAMERA)
    await db.execute("INSERT INTO alert_rules (name, severity, schedule) VALUES ('night', "
                     "'high', $1)", {"start": "22:00", "end": "06:00"})
    detection = await db.fetchval(
        "INSERT INTO detections (camera_id, file_path, captured_at, object_type, confidence, "
        "bbox_x, bbox_y, bbox_width, bbox_height) VALUES ($1, '/x/a.jpg', $2, 'person', 0.95,"
        " 100, 100, 200, 400) RETURNING id", CAMERA, afternoon)
    async with running_analyzer(house, db, redis, keyspace, "test-analyze-la") as queue:
        await queue.push({"batch_id": "la", "camera_id": CAMERA, "detection_ids": [detection]})
        event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))

    assert event["started_at"] == afternoon
    assert "1 person in the afternoon (Tue 15:30)" in event["summary"]
    assert (event["risk_score"], event["risk_level"]) == (49, "medium")  # not 73, high
    assert "Night" not in event["reasoning"]
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0  # the night rule stays quiet
    rows = await db.fetch("SELECT * FROM detections")
    context = await batch_context(db, house, CAMERA, rows)
    assert "It is daytime: Tuesday 15:30, afternoon (2026-11-24)." in build_prompt(context)
    # Left to the server's zone, the same moment is 23:30: night.
    server = await batch_context(db, config, CAMERA, rows)
    assert (server.local_time.hour, time_of_day(server.local_time)) == (23, "night")
