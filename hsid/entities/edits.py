"""Entity edits a person makes through the API: merge two entities, split a detection off,
delete one. Each runs in one transaction under its type's lock (entities/matcher.py), so
it never interleaves with a detect worker matching against the same entities, and the
workers' caches see the result at their next match (the rows' versions change).

Means are recomputed from the detections' own embeddings (entity_detections) where they
are all still there, and combined from the entities' means, weighted by their detection
counts, where retention took some: an entity outlives its oldest detections.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import numpy as np

from hsid.core.errors import Conflict, InvalidInput, NotFound
from hsid.entities.matcher import (
    LOCK_ENTITY_TYPE,
    MEAN_WEIGHT_CAP,
    add_to_metadata,
    entity_vector,
    normalised,
)

# What the API shows of an entity: embedding_vector stays internal (large, and meaningless
# outside re-identification).
ENTITY_COLUMNS = (
    "id, entity_type, trust_status, first_seen_at, last_seen_at, detection_count, "
    "entity_metadata, primary_detection_id"
)
SELECT_TYPE = "SELECT entity_type FROM entities WHERE id = $1"
SELECT_FOR_UPDATE = """
SELECT id, entity_type, trust_status, embedding_vector, first_seen_at, last_seen_at,
       detection_count, entity_metadata, primary_detection_id
FROM entities WHERE id = any($1::uuid[]) FOR UPDATE
"""
# An entity's links with when and where each detection was seen, oldest first.
SELECT_LINKS = """
SELECT l.detection_id, l.embedding, d.camera_id, d.object_type,
       coalesce(d.captured_at, d.detected_at) AS happened_at
FROM entity_detections l JOIN detections d ON d.id = l.detection_id
WHERE l.entity_id = $1 ORDER BY happened_at, l.detection_id
"""
UPDATE_MERGED = """
UPDATE entities SET embedding_vector = $2, detection_count = $3, first_seen_at = $4,
       last_seen_at = $5, entity_metadata = $6, trust_status = $7, primary_detection_id = $8
WHERE id = $1
RETURNING """ + ENTITY_COLUMNS
MOVE_LINKS = "UPDATE entity_detections SET entity_id = $1 WHERE entity_id = $2"
DELETE_ENTITY = "DELETE FROM entities WHERE id = $1 RETURNING id"
INSERT_SPLIT = """
INSERT INTO entities (entity_type, embedding_vector, first_seen_at, last_seen_at,
                      detection_count, entity_metadata, primary_detection_id)
VALUES ($1, $2, $3, $3, 1, $4, $5)
RETURNING """ + ENTITY_COLUMNS
MOVE_LINK = """
UPDATE entity_detections SET entity_id = $2, similarity = NULL WHERE detection_id = $1
"""


async def _lock_type(conn: asyncpg.Connection, entity_ids: list[uuid.UUID]) -> str:
    """Take the lock of the entities' type; NotFound for one that does not exist, Conflict
    when they are of different types."""
    types = set()
    for entity_id in entity_ids:
        entity_type = await conn.fetchval(SELECT_TYPE, entity_id)
        if entity_type is None:
            raise NotFound(f"entity {entity_id} not found")
        types.add(entity_type)
    if len(types) > 1:
        raise Conflict(f"entities of different types ({', '.join(sorted(types))}) "
                       "cannot be merged")
    entity_type = types.pop()
    await conn.execute(LOCK_ENTITY_TYPE, entity_type)
    return entity_type


async def _locked_rows(conn: asyncpg.Connection,
                       entity_ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = {row["id"]: row for row in await conn.fetch(SELECT_FOR_UPDATE, entity_ids)}
    for entity_id in entity_ids:  # deleted while the lock was awaited
        if entity_id not in rows:
            raise NotFound(f"entity {entity_id} not found")
    return rows


async def merge_entities(pool: asyncpg.Pool, target_id: uuid.UUID,
                         source_id: uuid.UUID) -> asyncpg.Record:
    """Fold `source_id` into `target_id` (its detections, sightings and cameras) and
    delete it; returns the target. Trust is the target's, or the source's when the target
    was unknown. Raises InvalidInput for an entity merged with itself, NotFound, and
    Conflict for entities of different types."""
    if target_id == source_id:
        raise InvalidInput("an entity cannot be merged with itself", field="entity_id")
    async with pool.acquire() as conn, conn.transaction():
        await _lock_type(conn, [target_id, source_id])
        rows = await _locked_rows(conn, [target_id, source_id])
        target, source = rows[target_id], rows[source_id]
        await conn.execute(MOVE_LINKS, target_id, source_id)
        await conn.execute(DELETE_ENTITY, source_id)
        links = await conn.fetch(SELECT_LINKS, target_id)
        count = target["detection_count"] + source["detection_count"]
        vector = (_links_mean(links) if len(links) == count
                  else _weighted_mean([target, source]))
        metadata = _merged_metadata(target["entity_metadata"], source["entity_metadata"],
                                    source_id)
        trust = (source["trust_status"] if target["trust_status"] == "unknown"
                 else target["trust_status"])
        return await conn.fetchrow(
            UPDATE_MERGED, target_id, _stored(vector), count,
            min(target["first_seen_at"], source["first_seen_at"]),
            max(target["last_seen_at"], source["last_seen_at"]), metadata, trust,
            target["primary_detection_id"] or source["primary_detection_id"])


async def split_detection(pool: asyncpg.Pool, entity_id: uuid.UUID,
                          detection_id: int) -> asyncpg.Record:
    """Make the entity's detection `detection_id` an entity of its own (trust unknown) and
    return it; the entity keeps the rest, its mean and times recomputed. Raises NotFound
    (no such entity, or the detection is not one of its) and Conflict when it is the
    entity's only detection."""
    async with pool.acquire() as conn, conn.transaction():
        entity_type = await _lock_type(conn, [entity_id])
        entity = (await _locked_rows(conn, [entity_id]))[entity_id]
        links = await conn.fetch(SELECT_LINKS, entity_id)
        link = next((row for row in links if row["detection_id"] == detection_id), None)
        if link is None:
            raise NotFound(f"detection {detection_id} is not one of entity {entity_id}'s")
        rest = [row for row in links if row["detection_id"] != detection_id]
        if not rest:
            raise Conflict(f"detection {detection_id} is entity {entity_id}'s only one; "
                           "there is nothing to split it from")
        metadata = add_to_metadata({"split_from": str(entity_id)}, link["camera_id"],
                                   link["object_type"])
        created = await conn.fetchrow(
            INSERT_SPLIT, entity_type, entity_vector(np.asarray(link["embedding"], np.float32)),
            link["happened_at"], metadata, detection_id)
        await conn.execute(MOVE_LINK, detection_id, created["id"])
        await _update_rest(conn, entity, rest, link)
        return created


async def _update_rest(conn: asyncpg.Connection, entity: asyncpg.Record,
                       rest: list[asyncpg.Record], split: asyncpg.Record) -> None:
    """The entity left after a split: one detection fewer, mean of the rest, and times,
    primary detection and cameras moved off the split one where it held them."""
    count = entity["detection_count"] - 1
    complete = len(rest) == count  # retention took none of its detections
    vector = _links_mean(rest) if complete else _stored_vector(entity)
    first, last = entity["first_seen_at"], entity["last_seen_at"]
    if split["happened_at"] <= first:
        first = rest[0]["happened_at"]
    if split["happened_at"] >= last:
        last = rest[-1]["happened_at"]
    metadata = dict(entity["entity_metadata"] or {})
    if complete:
        metadata["cameras"] = list(dict.fromkeys(row["camera_id"] for row in rest))
        metadata["classes"] = list(dict.fromkeys(row["object_type"] for row in rest))
    primary = entity["primary_detection_id"]
    if primary in (None, split["detection_id"]):
        primary = rest[0]["detection_id"]
    await conn.fetchrow(UPDATE_MERGED, entity["id"], _stored(vector), count, first, last,
                        metadata, entity["trust_status"], primary)


async def delete_entity(pool: asyncpg.Pool, entity_id: uuid.UUID) -> None:
    """Delete the entity and its links (its detections stay); NotFound when there is none."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock_type(conn, [entity_id])
        if await conn.fetchval(DELETE_ENTITY, entity_id) is None:
            raise NotFound(f"entity {entity_id} not found")


def _links_mean(links: list[asyncpg.Record]) -> np.ndarray | None:
    if not links:
        return None
    return normalised(np.mean([np.asarray(row["embedding"], np.float32) for row in links],
                              axis=0))


def _stored_vector(row: asyncpg.Record) -> np.ndarray | None:
    vector = row["embedding_vector"]
    return np.asarray(vector, np.float32) if vector else None


def _weighted_mean(rows: list[asyncpg.Record]) -> np.ndarray | None:
    """The entities' means weighted by their detection counts (as running_mean caps them)."""
    parts = [(v, min(row["detection_count"], MEAN_WEIGHT_CAP) or 1) for row in rows
             if (v := _stored_vector(row)) is not None]
    if not parts or len({v.shape for v, _ in parts}) > 1:
        return parts[0][0] if parts else None
    return normalised(sum((v * weight for v, weight in parts), np.zeros_like(parts[0][0])))


def _stored(vector: np.ndarray | None) -> list[float] | None:
    return entity_vector(vector) if vector is not None else None


def _merged_metadata(target: dict[str, Any] | None, source: dict[str, Any] | None,
                     source_id: uuid.UUID) -> dict[str, Any]:
    merged = {**(source or {}), **(target or {})}
    if "split_from" not in (target or {}):
        merged.pop("split_from", None)
    for key in ("cameras", "classes", "colours"):
        values = list((target or {}).get(key) or []) + list((source or {}).get(key) or [])
        if values:
            merged[key] = list(dict.fromkeys(values))
    merged["merged"] = [*((target or {}).get("merged") or []), str(source_id)]
    return merged
