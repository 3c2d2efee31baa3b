"""Zone routes under a camera: CRUD with normalised coordinates checked against the shape."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias, get_args

import asyncpg

from hsid.api.cameras import CameraPath, require_camera
from hsid.api.fields import (
    Absent,
    Arr,
    Body,
    Field,
    Int,
    Num,
    Shape,
    Text,
    columns,
    params,
    partial,
)
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.errors import InvalidInput

ZoneType = Literal["entry_point", "driveway", "sidewalk", "yard", "other"]
ZONE_TYPES = get_args(ZoneType)
ZoneShape = Literal["rectangle", "polygon"]
SHAPES = get_args(ZoneShape)
RECTANGLE_POINTS = (2, 4)  # two opposite corners, or all four
POLYGON_MIN_POINTS = 3


class Zone(Shape):
    id: str
    camera_id: str
    name: str
    zone_type: ZoneType
    coordinates: Any
    shape: ZoneShape
    color: str
    enabled: bool
    priority: int
    created_at: datetime
    updated_at: datetime


Point: TypeAlias = Annotated[list[Annotated[float, Num(0.0, 1.0)]], Arr(2, 2),
                             Field(description="[x, y], normalised to 0..1 of the image size")]


class ZoneBody(Body):
    id: Annotated[str, Text(64, pattern="[A-Za-z0-9_-]{1,64}")] = Absent(
        "default: a generated id")
    name: Annotated[str, Text(min_length=1)]
    zone_type: ZoneType = "other"
    coordinates: Annotated[list[Point], Arr(2, 64)] = Field(
        description="rectangle: 2 or 4 points; polygon: 3 or more")
    shape: ZoneShape = "rectangle"
    color: Annotated[str, Text(7, pattern="#[0-9A-Fa-f]{6}")] = "#3B82F6"
    enabled: bool = True
    priority: Annotated[int, Int(0, 1000)] = 0


ZonePatch = partial(ZoneBody, *(set(ZoneBody.model_fields) - {"id"}),
                    immutable=frozenset({"id", "camera_id"}))
ZonePath = params(CameraPath, zone_id=(Annotated[str, Text(64)], Field(description="zone id")))

ZoneQuery = params(Paged, enabled=(bool, None))


ZONE_COLUMNS = columns(Zone)
SELECT_ZONE = "SELECT " + ZONE_COLUMNS + " FROM zones WHERE id = $1 AND camera_id = $2"
LOCK_ZONE = SELECT_ZONE + " FOR UPDATE"  # a PATCH checks the merged row, then writes it
INSERT_ZONE = (
    "INSERT INTO zones (id, camera_id, name, zone_type, coordinates, shape, color, enabled, "
    "priority) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING " + ZONE_COLUMNS
)
UPDATE_ZONE = (
    "UPDATE zones SET {sets}, updated_at = now() WHERE id = $1 AND camera_id = $2 "
    "RETURNING " + ZONE_COLUMNS
)
DELETE_ZONE = "DELETE FROM zones WHERE id = $1 AND camera_id = $2 RETURNING id"
LIST_ZONES = Listing(
    select="SELECT " + ZONE_COLUMNS + " FROM zones {where} "
           "ORDER BY priority DESC, id LIMIT {limit} OFFSET {offset}",
    table="zones",
    filters={"camera_id": "camera_id = {}", "enabled": "enabled = {}"},
)

api = ApiRoutes("zones")


def check_shape(zone: Mapping[str, Any]) -> None:
    """The point count must fit the shape (checked on the merged row for a PATCH)."""
    count, shape = len(zone["coordinates"]), zone["shape"]
    if shape == "rectangle" and count not in RECTANGLE_POINTS:
        raise InvalidInput("a rectangle needs 2 or 4 points", field="coordinates")
    if shape == "polygon" and count < POLYGON_MIN_POINTS:
        raise InvalidInput(f"a polygon needs at least {POLYGON_MIN_POINTS} points",
                           field="coordinates")


@api.get("/api/cameras/{camera_id}/zones", "List a camera's zones", path_params=CameraPath,
         query=ZoneQuery, response=Page[Zone])
async def list_zones(call: Call) -> dict:
    await require_camera(call.pool, call.path["camera_id"])
    return await fetch_page(call.pool, LIST_ZONES, {**call.query, **call.path})


@api.post("/api/cameras/{camera_id}/zones", "Add a zone to a camera", path_params=CameraPath,
          body=ZoneBody, status=201, response=Zone, audit=Audit("zone_created", "zone"))
async def create_zone(call: Call) -> asyncpg.Record:
    zone = {**call.body, "id": call.body.get("id") or uuid.uuid4().hex}
    call.audit(zone["id"], camera_id=call.path["camera_id"])
    check_shape(zone)
    await require_camera(call.pool, call.path["camera_id"])
    return await call.pool.fetchrow(
        INSERT_ZONE, zone["id"], call.path["camera_id"], zone["name"], zone["zone_type"],
        zone["coordinates"], zone["shape"], zone["color"], zone["enabled"], zone["priority"])


@api.get("/api/cameras/{camera_id}/zones/{zone_id}", "Get a zone", path_params=ZonePath,
         response=Zone)
async def get_zone(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_ZONE, call.path["zone_id"], call.path["camera_id"],
                           what="zone")


@api.patch(
    "/api/cameras/{camera_id}/zones/{zone_id}", "Change a zone", path_params=ZonePath,
    body=ZonePatch, response=Zone, audit=Audit("zone_updated", "zone", "zone_id"),
)
async def update_zone(call: Call) -> asyncpg.Record:
    keys = (call.path["zone_id"], call.path["camera_id"])
    async with call.pool.acquire() as conn, conn.transaction():
        current = await fetch_one(conn, LOCK_ZONE, *keys, what="zone")
        check_shape({**dict(current), **call.body})
        return await update_one(conn, UPDATE_ZONE, call.body, *keys, what="zone")


@api.delete("/api/cameras/{camera_id}/zones/{zone_id}", "Delete a zone", path_params=ZonePath,
            status=204, audit=Audit("zone_deleted", "zone", "zone_id"))
async def delete_zone(call: Call) -> None:
    await fetch_one(call.pool, DELETE_ZONE, call.path["zone_id"], call.path["camera_id"],
                    what="zone")
