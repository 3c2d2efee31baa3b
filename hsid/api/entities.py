"""Entity routes: re-identified persons and vehicles, filtered; one with its detections and
thumbnails; its trust status; merging two, splitting a detection off, deleting one.

Every change writes an audit row (routing.Audit). Merge, split and delete run under the
entity type's lock (entities/edits.py), so they never interleave with matching.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from hsid.api.fields import Body, Int, Shape, Str, Uuid, out
from hsid.api.queries import Listing, fetch_one, fetch_page, page_of, paged, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.entities import edits as entity_edits
from hsid.entities.edits import ENTITY_COLUMNS

SELECT_ENTITY = "SELECT " + ENTITY_COLUMNS + " FROM entities WHERE id = $1"
UPDATE_ENTITY = "UPDATE entities SET {sets} WHERE id = $1 RETURNING " + ENTITY_COLUMNS
LIST_ENTITIES = Listing(
    select="SELECT " + ENTITY_COLUMNS + " FROM entities {where} "
           "ORDER BY last_seen_at DESC, id LIMIT {limit} OFFSET {offset}",
    table="entities",
    filters={"entity_type": "entity_type = {}", "trust_status": "trust_status = {}"},
)
# An entity's detections, newest first (entity_detections is hsid's extension, schema.sql).
ENTITY_DETECTION_COLUMNS = (
    "d.id, d.camera_id, d.object_type, d.confidence, d.detected_at, d.captured_at, "
    "d.bbox_x, d.bbox_y, d.bbox_width, d.bbox_height, d.thumbnail_path IS NOT NULL "
    "AS has_thumbnail, l.similarity"
)
LIST_ENTITY_DETECTIONS = Listing(
    select="SELECT " + ENTITY_DETECTION_COLUMNS + " FROM entity_detections l "
           "JOIN detections d ON d.id = l.detection_id {where} "
           "ORDER BY coalesce(d.captured_at, d.detected_at) DESC, d.id DESC "
           "LIMIT {limit} OFFSET {offset}",
    table="entity_detections l",
    filters={"entity_id": "l.entity_id = {}"},
    row=lambda row: entity_detection(row),  # defined below, with the shape it fills
)
DETAIL_DETECTIONS = 20  # the newest ones the detail shows; the rest are paged

ENTITY_TYPES = ("person", "vehicle", "animal", "package", "other")
TRUST_STATUSES = ("trusted", "untrusted", "unknown")
ENTITY_PATH = {"entity_id": Uuid(description="entity id")}
ENTITY = Shape({
    "id": out("string", format="uuid"),
    "entity_type": out("string", enum=list(ENTITY_TYPES)),
    "trust_status": out("string", enum=list(TRUST_STATUSES)),
    "first_seen_at": out("string", format="date-time"),
    "last_seen_at": out("string", format="date-time"),
    "detection_count": out("integer"),
    "entity_metadata": out(None),
    "primary_detection_id": out("integer", nullable=True),
})

ENTITY_DETECTION = Shape({
    "id": out("integer", description="detection id"),
    "camera_id": out("string"),
    "object_type": out("string", nullable=True),
    "confidence": out("number", nullable=True),
    "detected_at": out("string", format="date-time"),
    "captured_at": out("string", format="date-time", nullable=True),
    "bbox_x": out("integer", nullable=True),
    "bbox_y": out("integer", nullable=True),
    "bbox_width": out("integer", nullable=True),
    "bbox_height": out("integer", nullable=True),
    "similarity": out("number", nullable=True,
                      description="to the entity when recognised; null: it began the entity"),
    "thumbnail_url": out("string", nullable=True),
    "image_url": out("string"),
})
ENTITY_DETAIL = Shape({
    **ENTITY.properties,
    "detections": out("array", items=ENTITY_DETECTION.schema(),
                      description=f"its newest {DETAIL_DETECTIONS} detections; all of them "
                                  "at /api/entities/{entity_id}/detections"),
})

api = ApiRoutes("entities")


def entity_detection(row: asyncpg.Record) -> dict[str, Any]:
    """A detection of an entity as the API shows it, with links to its pictures."""
    out_row = dict(row)
    has_thumbnail = out_row.pop("has_thumbnail")
    base = f"/api/detections/{row['id']}"
    out_row["thumbnail_url"] = f"{base}/thumbnail" if has_thumbnail else None
    out_row["image_url"] = f"{base}/image"
    return out_row


@api.get("/api/entities", "List entities, most recently seen first", response=page_of(ENTITY),
         query=paged({"entity_type": Str(enum=ENTITY_TYPES),
                      "trust_status": Str(enum=TRUST_STATUSES)}))
async def list_entities(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_ENTITIES, call.query)


@api.get("/api/entities/{entity_id}", "Get an entity with its newest detections",
         path_params=ENTITY_PATH, response=ENTITY_DETAIL)
async def get_entity(call: Call) -> dict[str, Any]:
    entity_id = call.path["entity_id"]
    row = await fetch_one(call.pool, SELECT_ENTITY, entity_id, what="entity")
    page = await fetch_page(call.pool, LIST_ENTITY_DETECTIONS,
                            {"entity_id": entity_id, "limit": DETAIL_DETECTIONS, "offset": 0})
    return {**dict(row), "detections": page["items"]}


@api.get("/api/entities/{entity_id}/detections",
         "List an entity's detections with their thumbnails, newest first",
         path_params=ENTITY_PATH, response=page_of(ENTITY_DETECTION), query=paged({}))
async def list_entity_detections(call: Call) -> dict:
    entity_id = call.path["entity_id"]
    await fetch_one(call.pool, SELECT_ENTITY, entity_id, what="entity")
    return await fetch_page(call.pool, LIST_ENTITY_DETECTIONS,
                            {**call.query, "entity_id": entity_id})


@api.patch("/api/entities/{entity_id}", "Set an entity's trust status",
           path_params=ENTITY_PATH,
           body=Body({"trust_status": Str(enum=TRUST_STATUSES, required=True)}),
           response=ENTITY, audit=Audit("entity_trust_changed", "entity", "entity_id"))
async def update_entity(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_ENTITY, call.body, call.path["entity_id"],
                            what="entity")


@api.post("/api/entities/{entity_id}/merge",
          "Merge another entity into this one (the other is deleted)", path_params=ENTITY_PATH,
          body=Body({"entity_id": Uuid(required=True, description=(
              "the entity to fold into this one: its detections, sightings and cameras"))}),
          response=ENTITY, audit=Audit("entity_merged", "entity", "entity_id"))
async def merge_entity(call: Call) -> asyncpg.Record:
    """Both must be of one type (409 otherwise). The merged entity keeps this one's trust
    status, or takes the other's when this one's is unknown."""
    source = call.body["entity_id"]
    call.audit(merged=str(source))
    return await entity_edits.merge_entities(call.pool, call.path["entity_id"], source)


@api.post("/api/entities/{entity_id}/split",
          "Split a detection off into an entity of its own", path_params=ENTITY_PATH,
          body=Body({"detection_id": Int(minimum=1, maximum=2**31 - 1, required=True,
                                         description="one of this entity's detections")}),
          status=201, response=ENTITY, audit=Audit("entity_split", "entity", "entity_id"))
async def split_entity(call: Call) -> asyncpg.Record:
    """The new entity's trust status is unknown; this entity keeps the rest (409 when the
    detection is its only one)."""
    created = await entity_edits.split_detection(call.pool, call.path["entity_id"],
                                                 call.body["detection_id"])
    call.audit(detection_id=call.body["detection_id"], new_entity_id=str(created["id"]))
    return created


@api.delete("/api/entities/{entity_id}", "Delete an entity (its detections stay)",
            path_params=ENTITY_PATH, status=204,
            audit=Audit("entity_deleted", "entity", "entity_id"))
async def delete_entity(call: Call) -> None:
    await entity_edits.delete_entity(call.pool, call.path["entity_id"])
