"""Scene change routes: the tamper-detection findings, filtered, and marking them resolved."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import asyncpg

from hsid.api.alert_rules import Severity
from hsid.api.fields import Field, Int, Shape, Text, columns, params
from hsid.api.queries import Listing, Page, TimeRange, fetch_one, fetch_page
from hsid.api.routing import ApiRoutes, Audit, Call

ChangeType = Literal["lighting", "obstruction", "movement"]
CHANGE_TYPES = get_args(ChangeType)


class SceneChange(Shape):
    id: int
    camera_id: str
    change_type: ChangeType
    severity: Severity
    detected_at: datetime
    resolved_at: datetime | None
    details: Any


SceneChangePath = params(scene_change_id=(Annotated[int, Int(ge=1)],
                                          Field(description="scene change id")))
SceneChangeQuery = params(
    TimeRange, camera_id=(Annotated[str, Text(64)], None), change_type=(ChangeType, None),
    severity=(Severity, None), unresolved=(bool, Field(
        None, description="true: only open ones; false: only resolved ones")))


SCENE_CHANGE_COLUMNS = columns(SceneChange)
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

api = ApiRoutes("scene changes")


@api.get("/api/scene-changes", "List scene changes, newest first",
         response=Page[SceneChange], query=SceneChangeQuery)
async def list_scene_changes(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_SCENE_CHANGES, call.query)


@api.get("/api/scene-changes/{scene_change_id}", "Get a scene change",
         path_params=SceneChangePath, response=SceneChange)
async def get_scene_change(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_SCENE_CHANGE, call.path["scene_change_id"],
                           what="scene change")


@api.post("/api/scene-changes/{scene_change_id}/resolve", "Mark a scene change resolved",
          path_params=SceneChangePath, response=SceneChange,
          audit=Audit("scene_change_resolved", "scene_change", "scene_change_id"))
async def resolve_scene_change(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, RESOLVE_SCENE_CHANGE, call.path["scene_change_id"],
                           what="scene change")
