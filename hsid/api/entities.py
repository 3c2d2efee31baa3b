"""Entity routes: re-identified persons and objects, filtered, and their trust status."""

from __future__ import annotations

import asyncpg

from hsid.api.fields import Body, Shape, Str, Uuid, out
from hsid.api.queries import Listing, fetch_one, fetch_page, page_of, paged, update_one
from hsid.api.routing import ApiRoutes, Audit, Call

# embedding_vector stays internal: large, and meaningless outside re-identification.
ENTITY_COLUMNS = (
    "id, entity_type, trust_status, first_seen_at, last_seen_at, detection_count, "
    "entity_metadata, primary_detection_id"
)
SELECT_ENTITY = "SELECT " + ENTITY_COLUMNS + " FROM entities WHERE id = $1"
UPDATE_ENTITY = "UPDATE entities SET {sets} WHERE id = $1 RETURNING " + ENTITY_COLUMNS
LIST_ENTITIES = Listing(
    select="SELECT " + ENTITY_COLUMNS + " FROM entities {where} "
           "ORDER BY last_seen_at DESC, id LIMIT {limit} OFFSET {offset}",
    table="entities",
    filters={"entity_type": "entity_type = {}", "trust_status": "trust_status = {}"},
)

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

api = ApiRoutes("entities")


@api.get("/api/entities", "List entities, most recently seen first", response=page_of(ENTITY),
         query=paged({"entity_type": Str(enum=ENTITY_TYPES),
                      "trust_status": Str(enum=TRUST_STATUSES)}))
async def list_entities(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_ENTITIES, call.query)


@api.get("/api/entities/{entity_id}", "Get an entity", path_params=ENTITY_PATH,
         response=ENTITY)
async def get_entity(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_ENTITY, call.path["entity_id"], what="entity")


@api.patch("/api/entities/{entity_id}", "Set an entity's trust status",
           path_params=ENTITY_PATH,
           body=Body({"trust_status": Str(enum=TRUST_STATUSES, required=True)}),
           response=ENTITY, audit=Audit("entity_trust_changed", "entity", "entity_id"))
async def update_entity(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_ENTITY, call.body, call.path["entity_id"],
                            what="entity")
