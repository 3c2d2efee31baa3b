"""Scene change routes: the tamper-detection findings, filtered, and marking them resolved."""

from __future__ import annotations

import asyncpg

from hsid.api.alert_rules import SEVERITIES
from hsid.api.fields import Bool, Int, Shape, Str, out
from hsid.api.queries import TIME_RANGE, Listing, fetch_one, fetch_page, page_of, paged
from hsid.api.routing import ApiRoutes, Audit, Call

SCENE_CHANGE_COLUMNS = "id, camera_id, change_type, severity, detected_at, resolved_at, details"
SELECT_SCENE_CHANGE = "SELECT " + SCENE_CHANGE_COLUMNS + " FROM scene_changes WHERE id = $1"
# Resolving twice keeps the first resolution time: repeating the call changes nothing.
RESOLVE_SCENE_CHANGE = (
    "UPDATE scene_changes SET resolved_at = coalesce(resolved_at, now()) WHERE id = $1 "
    "RETURNING " + SCENE_CHANGE_COLUMNS
)
LIST_SCENE_CHANGES = Listing(
    select="SELECT " + SCENE_CHANGE_COLUMNS + " FROM scene_changes {where} "
           "ORDER BY detected_at DESC, id DESC LIMIT {limit} OFFSET {offset}",
    table="scene_changes",
    filters={
        "camera_id": "camera_id = {}",
        "unresolved": "(resolved_at IS NULL) = {}",
        "change_type": "change_type = {}",
        "severity": "severity = {}",
        "start": "detected_at >= {}",
        "end": "detected_at < {}",
    },
)

CHANGE_TYPES = ("lighting", "obstruction", "movement")
SCENE_CHANGE_PATH = {"scene_change_id": Int(minimum=1, description="scene change id")}
SCENE_CHANGE = Shape({
    "id": out("integer"),
    "camera_id": out("string"),
    "change_type": out("string", enum=list(CHANGE_TYPES)),
    "severity": out("string", enum=list(SEVERITIES)),
    "detected_at": out("string", format="date-time"),
    "resolved_at": out("string", nullable=True, format="date-time"),
    "details": out(None),
})

api = ApiRoutes("scene changes")


@api.get(
    "/api/scene-changes", "List scene changes, newest first", response=page_of(SCENE_CHANGE),
    query=paged({
        "camera_id": Str(max_length=64),
        "unresolved": Bool(description="true: only open ones; false: only resolved ones"),
        "change_type": Str(enum=CHANGE_TYPES),
        "severity": Str(enum=SEVERITIES),
        **TIME_RANGE,
    }),
)
async def list_scene_changes(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_SCENE_CHANGES, call.query)


@api.get("/api/scene-changes/{scene_change_id}", "Get a scene change",
         path_params=SCENE_CHANGE_PATH, response=SCENE_CHANGE)
async def get_scene_change(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_SCENE_CHANGE, call.path["scene_change_id"],
                           what="scene change")


@api.post("/api/scene-changes/{scene_change_id}/resolve", "Mark a scene change resolved",
          path_params=SCENE_CHANGE_PATH, response=SCENE_CHANGE,
          audit=Audit("scene_change_resolved", "scene_change", "scene_change_id"))
async def resolve_scene_change(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, RESOLVE_SCENE_CHANGE, call.path["scene_change_id"],
                           what="scene change")
