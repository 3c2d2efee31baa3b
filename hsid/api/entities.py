"""Entity routes: re-identified persons and vehicles, filtered; one with its detections and
thumbnails; its trust status; merging two, splitting a detection off, deleting one.

Every change writes an audit row (routing.Audit). Merge, split and delete run under the
entity type's lock (entities/edits.py), so they never interleave with matching.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

import asyncpg

from hsid.api.fields import Body, Field, Int, Shape, Uuid, columns, params
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.entities import edits as entity_edits
from hsid.entities.edits import ENTITY_COLUMNS

EntityType = Literal["person", "vehicle", "animal", "package", "other"]
ENTITY_TYPES = get_args(EntityType)
TrustStatus = Literal["trusted", "untrusted", "unknown"]
TRUST_STATUSES = get_args(TrustStatus)
DETAIL_DETECTIONS = 20  # the newest ones the detail shows; the rest are paged


class Entity(Shape):  # also entities/edits.py's ENTITY_COLUMNS (tests/api/test_openapi.py)
    id: UUID
    entity_type: EntityType
    trust_status: TrustStatus
    first_seen_at: datetime
    last_seen_at: datetime
    detection_count: int
    entity_metadata: Any
    primary_detection_id: int | None


class EntityDetection(Shape):
    id: int = Field(description="detection id")
    camera_id: str
    object_type: str | None
    confidence: float | None
    detected_at: datetime
    captured_at: datetime | None
    bbox_x: int | None
    bbox_y: int | None
    bbox_width: int | None
    bbox_height: int | None
    similarity: float | None = Field(
        description="to the entity when recognised; null: it began the entity")
    thumbnail_url: str | None
    image_url: str


class EntityDetail(Entity):
    detections: list[EntityDetection] = Field(
        description=f"its newest {DETAIL_DETECTIONS} detections; all of them "
                    "at /api/entities/{entity_id}/detections")


EntityPath = params(entity_id=(Uuid, Field(description="entity id")))
EntityQuery = params(Paged, entity_type=(EntityType, None), trust_status=(TrustStatus, None))


class TrustBody(Body):
    trust_status: TrustStatus


class MergeBody(Body):
    entity_id: Uuid = Field(description=(
        "the entity to fold into this one: its detections, sightings and cameras"))


class SplitBody(Body):
    detection_id: Annotated[int, Int(ge=1)] = Field(description="one of this entity's detections")


SELECT_ENTITY = "SELECT " + ENTITY_COLUMNS + " FROM entities WHERE id = $1"
UPDATE_ENTITY = "UPDATE entities SET {sets} WHERE id = $1 RETURNING " + ENTITY_COLUMNS
LIST_ENTITIES = Listing(
    select="SELECT " + ENTITY_COLUMNS + " FROM entities {where} "
           "ORDER BY last_seen_at DESC, id LIMIT {limit} OFFSET {offset}",
    table="entities",
    filters={"entity_type": "entity_type = {}", "trust_status": "trust_status = {}"},
)
# An entity's detections, newest first (entity_detections is hsid's extension, schema.sql).
ENTITY_DETECTION_COLUMNS = columns(
    EntityDetection, exclude=("similarity", "thumbnail_url", "image_url"), prefix="d."
) + ", d.thumbnail_path IS NOT NULL AS has_thumbnail, l.similarity"
LIST_ENTITY_DETECTIONS = Listing(
    select="SELECT " + ENTITY_DETECTION_COLUMNS + " FROM entity_detections l "
           "JOIN detections d ON d.id = l.detection_id {where} "
           "ORDER BY coalesce(d.captured_at, d.detected_at) DESC, d.id DESC "
           "LIMIT {limit} OFFSET {offset}",
    table="entity_detections l",
    filters={"entity_id": "l.entity_id = {}"},
    row=lambda row: entity_detection(row),  # defined below, with the shape it fills
)
api = ApiRoutes("entities")


def entity_detection(row: asyncpg.Record) -> dict[str, Any]:
    """A detection of an entity as the API shows it, with links to its pictures."""
    out_row = dict(row)
    has_thumbnail = out_row.pop("has_thumbnail")
    base = f"/api/detections/{row['id']}"
    out_row["thumbnail_url"] = f"{base}/thumbnail" if has_thumbnail else None
    out_row["image_url"] = f"{base}/image"
    return out_row


@api.get("/api/entities", "List entities, most recently seen first", response=Page[Entity],
         query=EntityQuery)
async def list_entities(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_ENTITIES, call.query)


@api.get("/api/entities/{entity_id}", "Get an entity with its newest detections",
         path_params=EntityPath, response=EntityDetail)
async def get_entity(call: Call) -> dict[str, Any]:
    entity_id = call.path["entity_id"]
    row = await fetch_one(call.pool, SELECT_ENTITY, entity_id, what="entity")
    page = await fetch_page(call.pool, LIST_ENTITY_DETECTIONS,
                            {"entity_id": entity_id, "limit": DETAIL_DETECTIONS, "offset": 0})
    return {**dict(row), "detections": page["items"]}


@api.get("/api/entities/{entity_id}/detections",
         "List an entity's detections with their thumbnails, newest first",
         path_params=EntityPath, response=Page[EntityDetection], query=Paged)
async def list_entity_detections(call: Call) -> dict:
    entity_id = call.path["entity_id"]
    await fetch_one(call.pool, SELECT_ENTITY, entity_id, what="entity")
    return await fetch_page(call.pool, LIST_ENTITY_DETECTIONS,
                            {**call.query, "entity_id": entity_id})


@api.patch("/api/entities/{entity_id}", "Set an entity's trust status",
           path_params=EntityPath, body=TrustBody, response=Entity,
           audit=Audit("entity_trust_changed", "entity", "entity_id"))
async def update_entity(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_ENTITY, call.body, call.path["entity_id"],
                            what="entity")


@api.post("/api/entities/{entity_id}/merge",
          "Merge another entity into this one (the other is deleted)", path_params=EntityPath,
          body=MergeBody, response=Entity, audit=Audit("entity_merged", "entity", "entity_id"))
async def merge_entity(call: Call) -> asyncpg.Record:
    """Both must be of one type (409 otherwise). The merged entity keeps this one's trust
    status, or takes the other's when this one's is unknown."""
    source = call.body["entity_id"]
    call.audit(merged=str(source))
    return await entity_edits.merge_entities(call.pool, call.path["entity_id"], source)


@api.post("/api/entities/{entity_id}/split",
          "Split a detection off into an entity of its own", path_params=EntityPath,
          body=SplitBody, status=201, response=Entity,
          audit=Audit("entity_split", "entity", "entity_id"))
async def split_entity(call: Call) -> asyncpg.Record:
    """The new entity's trust status is unknown; this entity keeps the rest (409 when the
    detection is its only one)."""
    created = await entity_edits.split_detection(call.pool, call.path["entity_id"],
                                                 call.body["detection_id"])
    call.audit(detection_id=call.body["detection_id"], new_entity_id=str(created["id"]))
    return created


@api.delete("/api/entities/{entity_id}", "Delete an entity (its detections stay)",
            path_params=EntityPath, status=204,
            audit=Audit("entity_deleted", "entity", "entity_id"))
async def delete_entity(call: Call) -> None:
    await entity_edits.delete_entity(call.pool, call.path["entity_id"])
