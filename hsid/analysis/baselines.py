"""Activity baselines: how much each camera usually sees, by local hour and weekday and by
object class and hour, so the analyzer can tell a usual 2 a.m. from an unusual one.

Each closed hour updates the slots it belongs to with an exponentially weighted moving
average (the reference's "exponential decay for seasonal drift"): avg = decay * count +
(1 - decay) * avg, the first sample taken as it is. Hours without detections count too, as
zeros, or a quiet night could never look quiet; for class baselines that means every class
the camera has a baseline for. An hour is taken SETTLE_MINUTES after it ends, so detections
still queued for it are counted. Detections count in the hour their snapshot was taken
(capture time, else detection time), not the hour hsid processed them.

Hours are the site's local hours ([site] timezone), cut where its clocks show HH:00, so
slots are right in half-hour and 45-minute zones (Adelaide, India, Nepal) too. Each local
hour is counted once: the hour repeated when clocks go back is one slot holding both halves'
detections, and the hour skipped when they go forward is no slot at all, rather than a quiet
one. A camera's first hour counts from the moment it was registered, partial as it is.

One process updates, under lock:baselines. A slot's last_updated is the end of the hour it
last took in, so the newest one says how far a camera is done: after a restart the service
catches up hour by hour (at most CATCH_UP_HOURS), and an hour is never counted twice, as
each hour's slots are written in one transaction. Detections of an hour already taken in (a
backlog uploaded after that) are not counted into it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import asyncpg
import structlog

from hsid.core.config import BaselinesConfig, SiteConfig, site_zone
from hsid.core.context import StageContext
from hsid.core.duty import Lock, run_duty

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
# When a detection happened: idx_detections_camera_happened indexes this expression.
HAPPENED = "coalesce(captured_at, detected_at)"
COUNT_BY_CLASS = f"""
SELECT object_type, count(*) AS n FROM detections
WHERE camera_id = $1 AND {HAPPENED} >= $2 AND {HAPPENED} < $3 AND object_type IS NOT NULL
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
COUNT_SINCE = f"""
SELECT count(*) FROM detections
WHERE camera_id = $1 AND {HAPPENED} >= $2 AND {HAPPENED} <= $3
"""


@dataclass(frozen=True, slots=True)
class Slot:
    """One local hour of the site: from `start` to `end` (UTC instants; two hours long when
    the clocks go back, shorter where they jump by half an hour), labelled with the wall
    clock's hour and weekday (0=Monday)."""

    start: datetime
    end: datetime
    hour: int
    weekday: int


def slot_at(moment: datetime, zone: tzinfo) -> Slot:
    """The local hour of `zone` that holds `moment`."""
    wall = moment.astimezone(zone).replace(minute=0, second=0, microsecond=0, tzinfo=None,
                                           fold=0)
    return Slot(_instant(wall, zone), _instant(wall + HOUR, zone), wall.hour, wall.weekday())


def _instant(wall: datetime, zone: tzinfo) -> datetime:
    """When the clocks of `zone` first show the naive `wall` time, or jump past it: a
    repeated time's first occurrence, and a skipped one's jump (PEP 495's fold=0)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def local_slot(moment: datetime, zone: tzinfo | None = None) -> tuple[int, int]:
    """(hour 0-23, weekday 0=Monday) of `moment` in `zone` (None: the system's)."""
    slot = slot_at(moment, zone or _system_zone())
    return slot.hour, slot.weekday


def _system_zone() -> tzinfo:
    return site_zone(SiteConfig())


async def update_baselines(pool: asyncpg.Pool, config: BaselinesConfig, now: datetime,
                           zone: tzinfo | None = None) -> int:
    """Take every closed, settled local hour of `zone` (the site's; None: the system's) not
    yet counted into the baselines; the number of camera-hours taken."""
    zone = zone or _system_zone()
    last_closed = now - timedelta(minutes=SETTLE_MINUTES)  # hours ending by then are taken
    oldest = slot_at(last_closed - CATCH_UP_HOURS * HOUR, zone).start
    taken = 0
    for camera in await pool.fetch(SELECT_CAMERA_PROGRESS):
        slot = _first_slot(camera["done_until"], camera["created_at"], zone)
        if slot.start < oldest:
            slot = slot_at(oldest, zone)
        while slot.end <= last_closed:
            await _take_hour(pool, config, camera["id"], slot)
            slot = slot_at(slot.end, zone)
            taken += 1
    return taken


def _first_slot(done_until: datetime | None, created_at: datetime, zone: tzinfo) -> Slot:
    """The first hour a camera has still to count: the one after the last it took in, or,
    for a new camera, the hour it was registered in. Progress that ends inside an hour (the
    zone was changed, or an older hsid cut UTC hours) resumes at the next whole one, so
    nothing is counted twice."""
    if done_until is None:
        return slot_at(created_at, zone)
    slot = slot_at(done_until, zone)
    return slot if slot.start == done_until else slot_at(slot.end, zone)


async def _take_hour(pool: asyncpg.Pool, config: BaselinesConfig, camera_id: str,
                     slot: Slot) -> None:
    async with pool.acquire() as conn, conn.transaction():
        counts = {row["object_type"]: row["n"] for row in await conn.fetch(
            COUNT_BY_CLASS, camera_id, slot.start, slot.end)}
        await conn.execute(UPSERT_ACTIVITY, camera_id, slot.hour, slot.weekday,
                           float(sum(counts.values())), config.decay, slot.end)
        known = {row["detection_class"] for row in await conn.fetch(KNOWN_CLASSES, camera_id)}
        for detection_class in sorted(known | set(counts)):
            await conn.execute(UPSERT_CLASS, camera_id, detection_class, slot.hour,
                               float(counts.get(detection_class, 0)), config.decay, slot.end)


async def baseline_context(pool: asyncpg.Pool, config: BaselinesConfig, camera_id: str,
                           moment: datetime, classes: list[str],
                           zone: tzinfo | None = None) -> list[str]:
    """Prompt lines on how usual this activity is at `moment` (when it happened), from
    slots of `zone`'s local hours (the site's; None: the system's) with at least
    min_samples; none where there isn't enough history yet."""
    slot = slot_at(moment, zone or _system_zone())
    hour, weekday = slot.hour, slot.weekday
    span = f"between {hour:02d}:00 and {(hour + 1) % 24:02d}:00"
    lines = []
    activity = await pool.fetchrow(SELECT_ACTIVITY_SLOT, camera_id, hour, weekday)
    if activity is not None and activity["sample_count"] >= config.min_samples:
        seen = await pool.fetchval(COUNT_SINCE, camera_id, slot.start, moment)
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

    def __init__(self, context: StageContext, *, zone: tzinfo | None = None) -> None:
        self._config = context.config.baselines
        self._zone = zone  # the site's; None: the system's
        self._pool = context.pool
        self._redis = context.redis
        self._keyspace = context.keyspace
        self._stopping = context.stopping

    async def run(self) -> None:
        await run_duty(BASELINES_DUTY, self._update, CHECK_SECONDS, self._stopping,
                       lock=Lock(self._redis, self._keyspace))

    async def _update(self) -> None:
        if taken := await update_baselines(self._pool, self._config, datetime.now(UTC),
                                           self._zone):
            log.info("baselines_updated", camera_hours=taken)
