"""Baselines: hourly moving averages by slot, zeros for quiet hours, catching up after a
restart without counting an hour twice, and the prompt lines they give."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis

from hsid.analysis import baselines
from hsid.analysis.baselines import (
    BaselineService,
    baseline_context,
    local_slot,
    update_baselines,
)
from hsid.analysis.llm import build_prompt
from hsid.core.config import BaselinesConfig, Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.pipeline.analyze_worker import batch_context
from tests.support import eventually

CAMERA = "yard"
CREATED = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
NOW = datetime(2026, 11, 25, 12, 15, tzinfo=UTC)  # hours 09, 10 and 11 are closed and settled
CONFIG = BaselinesConfig(decay=0.1, min_samples=2)


@pytest.fixture
async def camera(db: asyncpg.Pool) -> str:
    await db.execute("INSERT INTO cameras (id, name, folder_path, created_at) "
                     "VALUES ($1, 'Yard', '/x', $2)", CAMERA, CREATED)
    return CAMERA


async def _detect(db: asyncpg.Pool, at: datetime, kind: str, times: int = 1) -> None:
    for _ in range(times):
        await db.execute("INSERT INTO detections (camera_id, file_path, detected_at, object_type)"
                         " VALUES ($1, '/x/a.jpg', $2, $3)", CAMERA, at, kind)


async def _activity(db: asyncpg.Pool, hour_start: datetime) -> tuple[float, int]:
    hour, weekday = local_slot(hour_start)
    row = await db.fetchrow("SELECT avg_count, sample_count FROM activity_baselines "
                            "WHERE camera_id = $1 AND hour = $2 AND day_of_week = $3",
                            CAMERA, hour, weekday)
    return row["avg_count"], row["sample_count"]


async def _classes(db: asyncpg.Pool, hour_start: datetime) -> dict[str, tuple[float, int]]:
    hour, _ = local_slot(hour_start)
    rows = await db.fetch("SELECT detection_class, frequency, sample_count FROM class_baselines"
                          " WHERE camera_id = $1 AND hour = $2", CAMERA, hour)
    return {r["detection_class"]: (r["frequency"], r["sample_count"]) for r in rows}


def _hour(h: int, days: int = 0) -> datetime:
    return datetime(2026, 11, 25, h, tzinfo=UTC) + timedelta(days=days)


async def test_each_closed_hour_counts_once_and_quiet_hours_count_as_zero(
    db: asyncpg.Pool, camera: str,
) -> None:
    await _detect(db, _hour(9) + timedelta(minutes=10), "person", 2)
    await _detect(db, _hour(9) + timedelta(minutes=40), "car")
    await _detect(db, _hour(11) + timedelta(minutes=5), "person")
    await _detect(db, _hour(12) + timedelta(minutes=1), "person")  # the hour is still open

    assert await update_baselines(db, CONFIG, NOW) == 4  # 08 (from 08:30, when registered),
    assert await update_baselines(db, CONFIG, NOW) == 0  # 09, 10 and 11

    assert await _activity(db, _hour(8)) == (0.0, 1)
    assert await _activity(db, _hour(9)) == (3.0, 1)
    assert await _activity(db, _hour(10)) == (0.0, 1)
    assert await _activity(db, _hour(11)) == (1.0, 1)
    assert await _classes(db, _hour(9)) == {"person": (2.0, 1), "car": (1.0, 1)}
    assert await _classes(db, _hour(10)) == {"person": (0.0, 1), "car": (0.0, 1)}
    assert await _classes(db, _hour(11)) == {"person": (1.0, 1), "car": (0.0, 1)}


async def test_moving_average_weighs_the_newest_hour_by_decay(
    db: asyncpg.Pool, camera: str,
) -> None:
    await _detect(db, _hour(9) + timedelta(minutes=10), "person", 3)
    await update_baselines(db, CONFIG, NOW)
    await _detect(db, _hour(9, days=7) + timedelta(minutes=10), "person", 13)

    await update_baselines(db, CONFIG, NOW + timedelta(days=7))

    weekly = 0.1 * 13 + 0.9 * 3.0  # the same weekday and hour, a week later
    assert await _activity(db, _hour(9)) == (pytest.approx(weekly), 2)
    daily = 3.0
    for count in (0, 0, 0, 0, 0, 0, 13):  # the same hour on each of the next seven days
        daily = 0.1 * count + 0.9 * daily
    frequency, samples = (await _classes(db, _hour(9)))["person"]
    assert (frequency, samples) == (pytest.approx(daily), 8)


async def test_a_long_outage_catches_up_one_week_at_most(
    db: asyncpg.Pool, camera: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(baselines, "CATCH_UP_HOURS", 5)

    assert await update_baselines(db, CONFIG, NOW + timedelta(days=30)) == 5
    assert await db.fetchval("SELECT sum(sample_count) FROM activity_baselines") == 5


async def test_prompt_lines_quote_slots_with_enough_history(
    db: asyncpg.Pool, camera: str,
) -> None:
    moment = _hour(2) + timedelta(minutes=40)
    hour, weekday = local_slot(moment)
    await db.execute("INSERT INTO activity_baselines (camera_id, hour, day_of_week, avg_count,"
                     " sample_count) VALUES ($1, $2, $3, 0.5, 6)", CAMERA, hour, weekday)
    await db.executemany(
        "INSERT INTO class_baselines (camera_id, detection_class, hour, frequency, sample_count)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(CAMERA, "person", hour, 0.04, 30), (CAMERA, "car", hour, 1.5, 1)])
    hour_start = moment.astimezone().replace(minute=0, second=0, microsecond=0)
    await _detect(db, hour_start + timedelta(minutes=5), "person", 4)

    lines = await baseline_context(db, CONFIG, CAMERA, moment, ["person", "car"])

    assert len(lines) == 2  # car's slot has 1 sample, under min_samples
    assert "usually sees 0.5 detections an hour" in lines[0]
    assert "(6 weeks of history); this hour so far: 4. That is unusually busy." in lines[0]
    assert lines[1].startswith("person: usually 0.04 detections an hour")
    assert "(30 days of history) (rare here at this time)" in lines[1]
    assert await baseline_context(db, BaselinesConfig(min_samples=50), CAMERA, moment,
                                  ["person"]) == []


async def test_the_batch_context_carries_the_lines_unless_baselines_are_off(
    db: asyncpg.Pool, camera: str, config: Config,
) -> None:
    moment = _hour(3) + timedelta(minutes=20)
    hour, weekday = local_slot(moment)
    await db.execute("INSERT INTO activity_baselines (camera_id, hour, day_of_week, avg_count,"
                     " sample_count) VALUES ($1, $2, $3, 2.0, 9)", CAMERA, hour, weekday)
    await _detect(db, moment, "person")
    rows = await db.fetch("SELECT * FROM detections")

    context = await batch_context(db, config, CAMERA, rows)
    off = await batch_context(db, config.with_overrides({"baselines": {"enabled": False}}),
                              CAMERA, rows)

    [line] = context.extra_context
    assert "usually sees 2.0 detections an hour" in line and "(9 weeks of history)" in line
    assert off.extra_context == []
    assert "Context:\n- This camera usually sees 2.0" in build_prompt(context)


async def test_the_service_keeps_baselines_up_to_date(
    db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera: str,
) -> None:
    stopping = asyncio.Event()
    context = StageContext(Config(baselines=CONFIG), db, redis, keyspace, stopping=stopping)
    task = asyncio.create_task(BaselineService(context).run())
    try:
        taken = await eventually(lambda: db.fetchval(
            "SELECT sum(sample_count) FROM activity_baselines"), what="baselines")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)
    assert taken >= 1
    assert await redis.exists(keyspace.lock("baselines")) == 0


# --- Local hours of the site's zone ---------------------------------------------------------

async def _camera_since(db: asyncpg.Pool, created: datetime, camera: str = CAMERA) -> None:
    await db.execute("INSERT INTO cameras (id, name, folder_path, created_at) "
                     "VALUES ($1, 'Yard', '/x', $2)", camera, created)


async def _captured(db: asyncpg.Pool, taken: datetime, processed: datetime | None = None,
                    kind: str = "person") -> None:
    await db.execute("INSERT INTO detections (camera_id, file_path, detected_at, captured_at, "
                     "object_type) VALUES ($1, '/x/a.jpg', $2, $3, $4)",
                     CAMERA, processed or taken, taken, kind)


async def _slots(db: asyncpg.Pool) -> dict[tuple[int, int], tuple[float, int]]:
    """(hour, weekday) -> (avg_count, sample_count) of the camera's activity slots."""
    return {(r["hour"], r["day_of_week"]): (r["avg_count"], r["sample_count"])
            for r in await db.fetch("SELECT * FROM activity_baselines WHERE camera_id = $1",
                                    CAMERA)}


@pytest.mark.parametrize(("zone", "offset"), [("Australia/Adelaide", timedelta(hours=9.5)),
                                              ("Asia/Kathmandu", timedelta(hours=5.75))])
async def test_slots_are_local_hours_in_half_hour_and_45_minute_zones(
    db: asyncpg.Pool, zone: str, offset: timedelta,
) -> None:
    site = ZoneInfo(zone)
    day = datetime(2026, 6, 9, tzinfo=site)  # a Tuesday; no DST in June in either
    await _camera_since(db, day)
    await _captured(db, day + timedelta(hours=18, minutes=10))  # 18:10 local
    await _captured(db, day + timedelta(hours=18, minutes=55))
    await _captured(db, day + timedelta(hours=17, minutes=50))

    assert await update_baselines(db, CONFIG, day + timedelta(hours=19, minutes=15),
                                  zone=site) == 19  # 00:00 to 19:00 local
    slots = await _slots(db)
    assert slots[(18, 1)] == (2.0, 1)  # 18:10 is between 18:00 and 19:00, not in slot 17
    assert slots[(17, 1)] == (1.0, 1)
    assert local_slot(day + timedelta(hours=18, minutes=10), site) == (18, 1)
    assert day.utcoffset() == offset

    await db.execute("UPDATE activity_baselines SET sample_count = 9")
    moment = day + timedelta(hours=18, minutes=58)
    [line] = await baseline_context(db, CONFIG, CAMERA, moment, [], site)
    assert "on Tuesdays between 18:00 and 19:00" in line
    assert "this hour so far: 2." in line  # counted from 18:00 local, not 18:00 UTC


async def test_the_night_clocks_go_back_counts_the_repeated_hour_once_with_both_halves(
    db: asyncpg.Pool,
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = datetime(2026, 10, 25, tzinfo=berlin)  # Sunday: 03:00 CEST becomes 02:00 CET
    first_0230 = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second_0230 = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET, an hour later
    await _camera_since(db, day)
    await _captured(db, first_0230)
    await _captured(db, second_0230)

    taken = await update_baselines(db, CONFIG, day + timedelta(days=1, minutes=15), zone=berlin)

    assert taken == 24  # 25 hours of time, 24 local hours, each once
    slots = await _slots(db)
    assert set(slots) == {(hour, 6) for hour in range(24)}
    assert slots[(2, 6)] == (2.0, 1)  # one sample holding both halves
    assert slots[(3, 6)] == (0.0, 1)


async def test_the_night_clocks_go_forward_the_missing_hour_is_no_quiet_hour(
    db: asyncpg.Pool,
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = datetime(2026, 3, 29, tzinfo=berlin)  # Sunday: 02:00 CET becomes 03:00 CEST
    await _camera_since(db, day)
    await _captured(db, datetime(2026, 3, 29, 0, 59, tzinfo=UTC))  # 01:59 CET
    await _captured(db, datetime(2026, 3, 29, 1, 1, tzinfo=UTC))  # 03:01 CEST, 2 min later

    taken = await update_baselines(db, CONFIG, day + timedelta(days=1, minutes=15), zone=berlin)

    assert taken == 23
    slots = await _slots(db)
    assert (2, 6) not in slots  # no 02:00 that day: not a zero
    assert slots[(1, 6)] == (1.0, 1) and slots[(3, 6)] == (1.0, 1)


async def test_a_cameras_first_partial_hour_is_counted(db: asyncpg.Pool) -> None:
    site = ZoneInfo("Asia/Kathmandu")
    registered = datetime(2026, 6, 9, 10, 40, tzinfo=site)
    await _camera_since(db, registered)
    await _captured(db, registered + timedelta(minutes=10))  # 10:50, in the first hour

    assert await update_baselines(db, CONFIG, registered + timedelta(minutes=45),
                                  zone=site) == 1
    assert await _slots(db) == {(10, 1): (1.0, 1)}


async def test_detections_count_in_the_hour_they_were_captured_not_processed(
    db: asyncpg.Pool,
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = datetime(2026, 11, 22, tzinfo=berlin)  # a Sunday
    await _camera_since(db, day)
    night, morning = day + timedelta(hours=2, minutes=13), day + timedelta(hours=9, minutes=40)
    await _captured(db, night, processed=morning)  # a backlog uploaded in the morning

    await update_baselines(db, CONFIG, day + timedelta(hours=10, minutes=15), zone=berlin)

    slots = await _slots(db)
    assert slots[(2, 6)] == (1.0, 1)
    assert slots[(9, 6)] == (0.0, 1)


async def test_progress_ending_inside_a_local_hour_resumes_at_the_next_one(
    db: asyncpg.Pool,
) -> None:
    site = ZoneInfo("Asia/Kathmandu")
    await _camera_since(db, datetime(2026, 6, 1, tzinfo=UTC))
    # Taken in by an older hsid, in UTC hours: done until 06:00 UTC, 11:45 in Kathmandu.
    await db.execute("INSERT INTO activity_baselines (camera_id, hour, day_of_week, avg_count,"
                     " sample_count, last_updated) VALUES ($1, 5, 0, 0, 1, $2)",
                     CAMERA, datetime(2026, 6, 8, 6, tzinfo=UTC))
    await _captured(db, datetime(2026, 6, 8, 6, 5, tzinfo=UTC))  # 11:50, counted before

    taken = await update_baselines(db, CONFIG, datetime(2026, 6, 8, 7, 30, tzinfo=UTC),
                                   zone=site)

    assert taken == 1  # 12:00-13:00 local (06:15-07:15 UTC) only
    assert (await _slots(db))[(12, 0)] == (0.0, 1)
