"""Entities: the same person or vehicle recognised across snapshots and cameras by appearance.

Each person or vehicle detection brings an L2-normalised appearance embedding (made by the
detect worker after its detections are stored and batched, pipeline/recognizer.py). It is
compared by cosine similarity with the entities of its type (person, vehicle) seen within
`window_hours` of it. The best one at or above the threshold is the same entity: its
last_seen_at and detection_count move on, and its embedding_vector becomes the normalised
running mean of its detections' embeddings (each new one weighing as much as the
MEAN_WEIGHT_CAP last, so a coat put on in the evening is followed). Below the threshold,
the detection starts a new entity: entity_type from its class, trust_status unknown,
primary_detection_id this detection, entity_metadata {"cameras", "classes", "colours"}
(the cameras it was seen on, its classes, the crop's dominant colours).

Which detections make up an entity is recorded in entity_detections (hsid's extension, see
schema.sql), one row per detection with its embedding, so the API can list an entity's
detections, split one off or merge two entities and recompute the means. A detection is
recognised once: one already linked is skipped, so a job run twice changes nothing.
Two detections of one snapshot are never the same entity (nobody stands twice in a picture).

Several processes may recognise at once (`--stages detect` on two machines). Each type is
matched and updated in one transaction under a per-type advisory lock, so the second
process waits for the first and then sees the entity it created instead of creating it
again. Matching runs on an in-process cache of the recent entities' vectors, refreshed
inside that lock from the table: the ids and row versions (PostgreSQL's xmin, which
every UPDATE changes) of the entities in the window are read, and only new or changed
rows are fetched again. What another process, or the API (trust, merge, split, delete),
changed is thus seen at the next match, without reading every vector each time.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import structlog

from hsid.core.config import EntitiesConfig

log = structlog.get_logger(__name__)

# The detector classes recognised as entities, and the entity_type each becomes.
ENTITY_TYPE_OF: dict[str, str] = {
    "person": "person",
    "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "motorcycle": "vehicle",
    "bicycle": "vehicle",
}
ENTITY_CLASSES = frozenset(ENTITY_TYPE_OF)
# A new sighting weighs 1 against the mean's min(detections, MEAN_WEIGHT_CAP): an entity
# seen for days keeps following slow changes of appearance (light, clothes, dirt).
MEAN_WEIGHT_CAP = 20
VECTOR_DECIMALS = 6  # embedding_vector is JSON: float32 needs no more

# Per-type lock, held by the transaction that matches and updates, and by API edits.
LOCK_ENTITY_TYPE = "SELECT pg_advisory_xact_lock(hashtext('hsid.entities'), hashtext($1))"
SELECT_VERSIONS = """
SELECT id, xmin::text AS version FROM entities
WHERE entity_type = $1 AND last_seen_at >= $2 AND embedding_vector IS NOT NULL
"""
SELECT_CHANGED = """
SELECT id, xmin::text AS version, embedding_vector, first_seen_at, last_seen_at,
       detection_count, entity_metadata
FROM entities WHERE id = any($1::uuid[])
"""
SELECT_LINKED = "SELECT detection_id FROM entity_detections WHERE detection_id = any($1::int[])"
INSERT_ENTITY = """
INSERT INTO entities (entity_type, embedding_vector, first_seen_at, last_seen_at,
                      detection_count, entity_metadata, primary_detection_id)
VALUES ($1, $2, $3, $3, 1, $4, $5)
RETURNING id, xmin::text AS version
"""
UPDATE_MATCHED = """
UPDATE entities SET embedding_vector = $2, detection_count = detection_count + 1,
       first_seen_at = least(first_seen_at, $3), last_seen_at = greatest(last_seen_at, $3),
       entity_metadata = $4
WHERE id = $1
RETURNING xmin::text AS version, first_seen_at, last_seen_at, detection_count
"""
INSERT_LINK = """
INSERT INTO entity_detections (detection_id, entity_id, similarity, embedding)
VALUES ($1, $2, $3, $4)
"""


@dataclass(frozen=True, slots=True)
class Sighting:
    """One detection to recognise: where and when it was seen, and how it looks."""

    detection_id: int
    camera_id: str
    object_type: str  # one of ENTITY_CLASSES
    seen_at: datetime  # its snapshot's capture time, else its detection time
    embedding: np.ndarray  # L2-normalised
    colours: tuple[str, ...] = ()
    snapshot: str = ""  # the image it is in; two of one image are never one entity

    @property
    def entity_type(self) -> str:
        return ENTITY_TYPE_OF[self.object_type]


@dataclass(frozen=True, slots=True)
class Recognised:
    """What became of a sighting: its entity, and its similarity to it (None: new)."""

    detection_id: int
    entity_id: uuid.UUID
    entity_type: str
    similarity: float | None

    @property
    def created(self) -> bool:
        return self.similarity is None


@dataclass(slots=True)
class _Entity:
    """A cached entity: what matching needs, and the row version it was read at."""

    version: str
    vector: np.ndarray
    first_seen: datetime
    last_seen: datetime
    count: int
    metadata: dict[str, Any] = field(default_factory=dict)


def entity_vector(vector: np.ndarray) -> list[float]:
    """An embedding as entities.embedding_vector stores it (a JSON array)."""
    return [round(float(x), VECTOR_DECIMALS) for x in vector]


def normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def running_mean(mean: np.ndarray, count: int, vector: np.ndarray) -> np.ndarray:
    """The normalised mean after one more sighting (see MEAN_WEIGHT_CAP)."""
    return normalised(mean * min(count, MEAN_WEIGHT_CAP) + vector)


def add_to_metadata(metadata: dict[str, Any] | None, camera_id: str,
                    object_type: str) -> dict[str, Any]:
    """entity_metadata with the camera and class of one more sighting (first seen first)."""
    updated = dict(metadata or {})
    for key, value in (("cameras", camera_id), ("classes", object_type)):
        values = list(updated.get(key) or [])
        if value not in values:
            values.append(value)
        updated[key] = values
    return updated


class _TypeCache:
    """One entity type's recently seen entities, kept in step with the table by row version.

    Only touched while the type's lock is held; cleared when a transaction fails, as what
    it learnt inside may not have been committed.
    """

    def __init__(self) -> None:
        self.entities: dict[uuid.UUID, _Entity] = {}

    async def refresh(self, conn: asyncpg.Connection, entity_type: str, since: datetime) -> int:
        """Follow the table: drop entities gone or out of the window, read those new or
        changed since; returns how many rows were read again."""
        current = {row["id"]: row["version"]
                   for row in await conn.fetch(SELECT_VERSIONS, entity_type, since)}
        for gone in self.entities.keys() - current.keys():
            del self.entities[gone]
        changed = [i for i, version in current.items()
                   if i not in self.entities or self.entities[i].version != version]
        if changed:
            for row in await conn.fetch(SELECT_CHANGED, changed):
                self.entities[row["id"]] = _Entity(
                    row["version"], np.asarray(row["embedding_vector"], np.float32),
                    row["first_seen_at"], row["last_seen_at"], row["detection_count"],
                    dict(row["entity_metadata"] or {}))
        return len(changed)

    def best(self, sighting: Sighting, window: timedelta,
             excluded: set[uuid.UUID]) -> tuple[uuid.UUID, float] | None:
        """The most similar entity seen within `window` of the sighting, and how similar."""
        ids, vectors = [], []
        for entity_id, entity in self.entities.items():
            if (entity_id in excluded or entity.vector.shape != sighting.embedding.shape
                    or entity.last_seen < sighting.seen_at - window
                    or entity.first_seen > sighting.seen_at + window):
                continue
            ids.append(entity_id)
            vectors.append(entity.vector)
        if not ids:
            return None
        similarities = np.stack(vectors) @ sighting.embedding
        best = int(np.argmax(similarities))
        return ids[best], float(similarities[best])


class EntityMatcher:
    """Recognises sightings as entities: matches, creates, links (see the module docstring).

    One per process; safe to share between tasks, as each type's work runs under its lock.
    """

    def __init__(self, config: EntitiesConfig) -> None:
        self._config = config
        self._window = timedelta(hours=config.window_hours)
        self._caches: dict[str, _TypeCache] = defaultdict(_TypeCache)

    def threshold(self, entity_type: str) -> float:
        if entity_type == "vehicle" and self._config.vehicle_model:
            return self._config.vehicle_threshold
        return self._config.threshold

    async def record(self, pool: asyncpg.Pool,
                     sightings: Sequence[Sighting]) -> list[Recognised]:
        """Match, create and link every sighting not linked yet, one transaction per type;
        returns what each became, in time order. Idempotent. Database errors propagate
        (the caller logs them: recognition is best effort)."""
        by_type: dict[str, list[Sighting]] = defaultdict(list)
        for sighting in sorted(sightings, key=lambda s: (s.seen_at, s.detection_id)):
            by_type[sighting.entity_type].append(sighting)
        results: list[Recognised] = []
        for entity_type, group in sorted(by_type.items()):
            started = time.perf_counter()
            cache = self._caches[entity_type]
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(LOCK_ENTITY_TYPE, entity_type)
                    read = await cache.refresh(conn, entity_type,
                                               group[0].seen_at - self._window)
                    done = await self._match_all(conn, cache, entity_type, group)
            except BaseException:
                cache.entities.clear()
                raise
            results += done
            log.info("entities_recognised", entity_type=entity_type, sightings=len(group),
                     new=sum(r.created for r in done), matched=sum(not r.created for r in done),
                     cached=len(cache.entities), reread=read,
                     duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return results

    async def _match_all(self, conn: asyncpg.Connection, cache: _TypeCache, entity_type: str,
                         group: list[Sighting]) -> list[Recognised]:
        linked = {row["detection_id"] for row in await conn.fetch(
            SELECT_LINKED, [s.detection_id for s in group])}
        taken: dict[str, set[uuid.UUID]] = defaultdict(set)  # snapshot -> its entities
        done = []
        for sighting in group:
            if sighting.detection_id in linked:
                continue
            excluded = taken[sighting.snapshot] if sighting.snapshot else set()
            best = cache.best(sighting, self._window, excluded)
            if best is not None and best[1] >= self.threshold(entity_type):
                recognised = await self._join(conn, cache, sighting, *best)
            else:
                recognised = await self._create(conn, cache, sighting)
            if sighting.snapshot:
                taken[sighting.snapshot].add(recognised.entity_id)
            done.append(recognised)
        return done

    async def _join(self, conn: asyncpg.Connection, cache: _TypeCache, sighting: Sighting,
                    entity_id: uuid.UUID, similarity: float) -> Recognised:
        entity = cache.entities[entity_id]
        mean = running_mean(entity.vector, entity.count, sighting.embedding)
        metadata = add_to_metadata(entity.metadata, sighting.camera_id, sighting.object_type)
        row = await conn.fetchrow(UPDATE_MATCHED, entity_id, entity_vector(mean),
                                  sighting.seen_at, metadata)
        await conn.execute(INSERT_LINK, sighting.detection_id, entity_id, similarity,
                           sighting.embedding.tolist())
        cache.entities[entity_id] = replace(
            entity, version=row["version"], vector=mean, first_seen=row["first_seen_at"],
            last_seen=row["last_seen_at"], count=row["detection_count"], metadata=metadata)
        return Recognised(sighting.detection_id, entity_id, sighting.entity_type, similarity)

    async def _create(self, conn: asyncpg.Connection, cache: _TypeCache,
                      sighting: Sighting) -> Recognised:
        metadata = add_to_metadata({"colours": list(sighting.colours)}, sighting.camera_id,
                                   sighting.object_type)
        row = await conn.fetchrow(INSERT_ENTITY, sighting.entity_type,
                                  entity_vector(sighting.embedding), sighting.seen_at, metadata,
                                  sighting.detection_id)
        await conn.execute(INSERT_LINK, sighting.detection_id, row["id"], None,
                           sighting.embedding.tolist())
        cache.entities[row["id"]] = _Entity(row["version"], sighting.embedding,
                                            sighting.seen_at, sighting.seen_at, 1, metadata)
        return Recognised(sighting.detection_id, row["id"], sighting.entity_type, None)
