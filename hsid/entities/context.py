"""What the analyzer, the rule scorer and the alert rules learn of a batch's entities.

For each person and vehicle detection of a batch: the entity it was recognised as (if
any), its trust status, and how often it was seen that local day (the site's time zone),
on which cameras and since when, phrased for the prompt: "Person 1 (unknown, not marked):
seen 5 times today on 3 cameras (Front Door, Garage, Back Door), first at 07:10."

Entities are made after the detections are batched (pipeline/recognizer.py), so a batch
analysed at once (the fast path) may come before its entities: the analyzer waits for
them until `entities.wait_seconds` after the newest detection was stored, polling, and
goes on without those still missing. A batch analysed later (a batch window closing, a
retry) waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

import asyncpg

from hsid.core.config import EntitiesConfig
from hsid.entities.matcher import ENTITY_CLASSES

POLL_SECONDS = 0.05
TRUST_WORDS = {
    "trusted": "trusted: the household marked it as known and safe",
    "untrusted": "UNTRUSTED: the household marked it as unwelcome",
    "unknown": "unknown, not marked",
}

SELECT_PENDING = """
SELECT d.id, d.detected_at FROM detections d
WHERE d.id = any($1::int[]) AND d.object_type = any($2::text[])
  AND NOT EXISTS (SELECT 1 FROM entity_detections l WHERE l.detection_id = d.id)
"""
SELECT_ENTITIES = """
SELECT l.detection_id, e.id, e.entity_type, e.trust_status, e.first_seen_at,
       e.detection_count
FROM entity_detections l JOIN entities e ON e.id = l.entity_id
WHERE l.detection_id = any($1::int[])
"""
# Sightings in [$2, $3): count, cameras by name in order of first sighting, the first.
SELECT_SIGHTINGS = """
SELECT l.entity_id, count(*) AS sightings, min(s.happened_at) AS first_at,
       array_agg(s.camera ORDER BY s.happened_at) AS cameras
FROM entity_detections l
JOIN LATERAL (SELECT coalesce(d.captured_at, d.detected_at) AS happened_at,
                     coalesce(c.name, d.camera_id) AS camera
              FROM detections d LEFT JOIN cameras c ON c.id = d.camera_id
              WHERE d.id = l.detection_id) s ON true
WHERE l.entity_id = any($1::uuid[]) AND s.happened_at >= $2 AND s.happened_at < $3
GROUP BY l.entity_id
"""


@dataclass(frozen=True, slots=True)
class KnownEntity:
    """An entity of the batch, and how much it has been around today."""

    entity_id: str
    entity_type: str
    trust_status: str
    detection_ids: tuple[int, ...]
    first_seen_at: datetime
    detection_count: int  # ever, this batch's included
    sightings_today: int = 0
    cameras_today: tuple[str, ...] = ()  # names, in order of first sighting today
    first_today: datetime | None = None  # local time

    @property
    def new(self) -> bool:
        """Seen for the first time in this batch: it has no other detection."""
        return self.detection_count <= len(self.detection_ids)


@dataclass(frozen=True, slots=True)
class EntityFacts:
    """A batch's entities, by detection, and the prompt lines about them."""

    entities: list[KnownEntity] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def of(self, detection_id: int) -> KnownEntity | None:
        return next((e for e in self.entities if detection_id in e.detection_ids), None)


async def entity_facts(pool: asyncpg.Pool, config: EntitiesConfig, detection_ids: Sequence[int],
                       moment: datetime, zone: tzinfo | None) -> EntityFacts:
    """The entities of `detection_ids` (waiting for those of fresh detections, see the
    module docstring), with their sightings on `moment`'s local day."""
    if config.model:
        await _wait_for_entities(pool, detection_ids, config.wait_seconds)
    by_entity: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in await pool.fetch(SELECT_ENTITIES, list(detection_ids)):
        by_entity[str(row["id"])].append(row)
    if not by_entity:
        return EntityFacts()
    local = moment.astimezone(zone)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    sightings = {str(row["entity_id"]): row for row in await pool.fetch(
        SELECT_SIGHTINGS, list(by_entity), day_start, day_start + timedelta(days=1))}
    entities = []
    for entity_id, rows in by_entity.items():
        seen = sightings.get(entity_id)
        entities.append(KnownEntity(
            entity_id, rows[0]["entity_type"], rows[0]["trust_status"],
            tuple(sorted(r["detection_id"] for r in rows)), rows[0]["first_seen_at"],
            rows[0]["detection_count"], seen["sightings"] if seen else 0,
            tuple(dict.fromkeys(seen["cameras"])) if seen else (),
            seen["first_at"].astimezone(zone) if seen else None))
    entities.sort(key=lambda e: e.detection_ids[0])
    return EntityFacts(entities, _lines(entities, zone, config.window_hours))


async def _wait_for_entities(pool: asyncpg.Pool, detection_ids: Sequence[int],
                             wait_seconds: float) -> None:
    """Poll until every person and vehicle detection has its entity, or until
    `wait_seconds` after the newest of them was stored."""
    while True:
        pending = await pool.fetch(SELECT_PENDING, list(detection_ids), sorted(ENTITY_CLASSES))
        if not pending:
            return
        newest = max(row["detected_at"] for row in pending)
        left = (newest - datetime.now(UTC)).total_seconds() + wait_seconds
        if left <= 0:
            return
        await asyncio.sleep(min(POLL_SECONDS, left))


def _lines(entities: list[KnownEntity], zone: tzinfo | None, window_hours: float) -> list[str]:
    numbers: dict[str, int] = defaultdict(int)
    lines = []
    for entity in entities:
        numbers[entity.entity_type] += 1
        name = f"{entity.entity_type.capitalize()} {numbers[entity.entity_type]}"
        trust = TRUST_WORDS.get(entity.trust_status, entity.trust_status)
        lines.append(f"{name} ({trust}): {_sightings(entity, zone, window_hours)}")
    return lines


def _sightings(entity: KnownEntity, zone: tzinfo | None, window_hours: float) -> str:
    if entity.new:
        return f"not seen before (in the last {window_hours:g} hours): a first sighting."
    cameras = entity.cameras_today
    where = (f"on {len(cameras)} cameras ({', '.join(cameras)})" if len(cameras) > 1
             else f"on {cameras[0]}" if cameras else "")
    first = f", first at {entity.first_today:%H:%M}" if entity.first_today else ""
    times = "once" if entity.sightings_today == 1 else f"{entity.sightings_today} times"
    since = entity.first_seen_at.astimezone(zone)
    known = "" if entity.first_today and since >= entity.first_today else (
        f" Known since {since:%d %b %H:%M}.")
    return f"seen {times} today {where}{first}.{known}".replace("  ", " ")

