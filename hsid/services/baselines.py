"""Activity baselines: how much each camera usually sees, by local hour and weekday and by
object class and hour, so the analyzer can tell a usual 2 a.m. from an unusual one.

Each closed hour updates the slots it belongs to with an exponentially weighted moving
average (the reference's "exponential decay for seasonal drift"): avg = decay * count +
(1 - decay) * avg, the first sample taken as it is. Hours without detections count too, as
zeros, or a quiet night could never look quiet; for class baselines that means every class
the camera has a baseline for. An hour is taken SETTLE_MINUTES after it ends, so detections
still queued for it are counted.

One process updates, under lock:baselines. A slot's last_updated is the end of the hour it
last took in, so the newest one says how far a camera is done: after a restart the service
catches up hour by hour (at most CATCH_UP_HOURS), and an hour is never counted twice, as
each hour's slots are written in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis
import structlog

from hsid.config import BaselinesConfig
from hsid.errors import STORE_ERRORS
from hsid.keyspace import Keyspace
from hsid.services.locks import singleton_lock

log = structlog.get_logger(__name__)

BASELINES_DUTY = "baselines"  # lock:baselines
SETTLE_MINUTES = 10
CATCH_UP_HOURS = 7 * 24  # a longer outage starts afresh from a week ago
CHECK_SECONDS = 60.0
HOUR = timedelta(hours=1)
WEEKDAY_NAMES = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays",
                 "Sundays")

SELECT_CAMERA_PROGRESS = """
SELECT c.id, c.created_at, max(a.last_updated) AS done_until
FROM cameras c LEFT JOIN activity_baselines a ON a.camera_id = c.id
GROUP BY c.id, c.created_at ORDER BY c.id
"""
COUNT_BY_CLASS = """
SELECT object_type, count(*) AS n FROM detections
WHERE camera_id = $1 AND detected_at >= $2 AND detected_at < $3 AND object_type IS NOT NULL
GROUP BY object_type
"""
KNOWN_CLASSES = "SELECT DISTINCT detection_class FROM class_baselines WHERE camera_id = $1"
# $4 count, $5 decay, $6 the hour's end
UPSERT_ACTIVITY = """
INSERT INTO activity_baselines (camera_id, hour, day_of_week, avg_count, sample_count,
                                last_updated)
VALUES ($1, $2, $3, $4, 1, $6)
ON CONFLICT (camera_id, hour, day_of_week) DO UPDATE SET
    avg_count = $5 * $4 + (1 - $5) * activity_baselines.avg_count,
    sample_count = activity_baselines.sample_count + 1,
    last_updated = $6
"""
UPSERT_CLASS = """
INSERT INTO class_baselines (camera_id, detection_class, hour, frequency, sample_count,
                             last_updated)
VALUES ($1, $2, $3, $4, 1, $6)
ON CONFLICT (camera_id, detection_class, hour) DO UPDATE SET
    frequency = $5 * $4 + (1 - $5) * class_baselines.frequency,
    sample_count = class_baselines.sample_count + 1,
    last_updated = $6
"""
SELECT_ACTIVITY_SLOT = """
SELECT avg_count, sample_count FROM activity_baselines
WHERE camera_id = $1 AND hour = $2 AND day_of_week = $3
"""
SELECT_CLASS_SLOTS = """
SELECT detection_class, frequency, sample_count FROM class_baselines
WHERE camera_id = $1 AND hour = $2 AND detection_class = any($3::text[])
"""
COUNT_SINCE = """
SELECT count(*) FROM detections WHERE camera_id = $1 AND detected_at >= $2 AND detected_at <= $3
"""


def local_slot(moment: datetime) -> tuple[int, int]:
    """(hour 0-23, weekday 0=Monday) of `moment` in the server's time zone."""
    local = moment.astimezone()
    return local.hour, local.weekday()


async def update_baselines(pool: asyncpg.Pool, config: BaselinesConfig, now: datetime) -> int:
    """Take every closed, settled hour not yet counted into the baselines; the number of
    camera-hours taken."""
    last_closed = (now - timedelta(minutes=SETTLE_MINUTES)).replace(
        minute=0, second=0, microsecond=0)  # the end of the newest hour to take
    taken = 0
    for camera in await pool.fetch(SELECT_CAMERA_PROGRESS):
        start = camera["done_until"] or _hour_after(camera["created_at"])
        start = max(start, last_closed - CATCH_UP_HOURS * HOUR)
        while start + HOUR <= last_closed:
            await _take_hour(pool, config, camera["id"], start)
            start += HOUR
            taken += 1
    return taken


async def _take_hour(pool: asyncpg.Pool, config: BaselinesConfig, camera_id: str,
                     start: datetime) -> None:
    end = start + HOUR
    hour, weekday = local_slot(start)
    async with pool.acquire() as conn, conn.transaction():
        counts = {row["object_type"]: row["n"]
                  for row in await conn.fetch(COUNT_BY_CLASS, camera_id, start, end)}
        await conn.execute(UPSERT_ACTIVITY, camera_id, hour, weekday,
                           float(sum(counts.values())), config.decay, end)
        known = {row["detection_class"] for row in await conn.fetch(KNOWN_CLASSES, camera_id)}
        for detection_class in sorted(known | set(counts)):
            await conn.execute(UPSERT_CLASS, camera_id, detection_class, hour,
                               float(counts.get(detection_class, 0)), config.decay, end)


def _hour_after(moment: datetime) -> datetime:
    """The start of the first whole hour after `moment` (in UTC, like every hour here)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + HOUR


async def baseline_context(pool: asyncpg.Pool, config: BaselinesConfig, camera_id: str,
                           moment: datetime, classes: list[str]) -> list[str]:
    """Prompt lines on how usual this activity is, from slots with at least min_samples;
    none where there isn't enough history yet."""
    hour, weekday = local_slot(moment)
    span = f"between {hour:02d}:00 and {(hour + 1) % 24:02d}:00"
    lines = []
    activity = await pool.fetchrow(SELECT_ACTIVITY_SLOT, camera_id, hour, weekday)
    if activity is not None and activity["sample_count"] >= config.min_samples:
        local = moment.astimezone()
        hour_start = local.replace(minute=0, second=0, microsecond=0)
        seen = await pool.fetchval(COUNT_SINCE, camera_id, hour_start, moment)
        usual = activity["avg_count"]
        verdict = " That is unusually busy." if seen >= 3 * usual + 2 else ""
        lines.append(
            f"This camera usually sees {usual:.1f} detections an hour on "
            f"{WEEKDAY_NAMES[weekday]} {span} ({activity['sample_count']} weeks of history); "
            f"this hour so far: {seen}.{verdict}")
    rows = await pool.fetch(SELECT_CLASS_SLOTS, camera_id, hour, sorted(set(classes)))
    for row in rows:
        if row["sample_count"] >= config.min_samples:
            rare = " (rare here at this time)" if row["frequency"] < 0.1 else ""
            lines.append(
                f"{row['detection_class']}: usually {row['frequency']:.2f} detections an hour "
                f"{span} ({row['sample_count']} days of history){rare}.")
    return lines


class BaselineService:
    """Stage: keeps the baselines up to date, hour by hour, while this process holds
    lock:baselines; `run` returns once `stopping` is set."""

    def __init__(self, config: BaselinesConfig, pool: asyncpg.Pool, redis: aioredis.Redis,
                 stopping: asyncio.Event, *, keyspace: Keyspace) -> None:
        self._config = config
        self._pool = pool
        self._redis = redis
        self._keyspace = keyspace
        self._stopping = stopping

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with singleton_lock(self._redis, self._keyspace, BASELINES_DUTY) as held:
                    if held and (taken := await update_baselines(
                            self._pool, self._config, datetime.now(UTC))):
                        log.info("baselines_updated", camera_hours=taken)
            except STORE_ERRORS as err:
                log.warning("baselines_not_updated", error=str(err) or type(err).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), CHECK_SECONDS)

