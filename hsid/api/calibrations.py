"""User calibration routes under a camera: CRUD of perspective and distance calibrations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg

from hsid.api.cameras import CameraPath, require_camera
from hsid.api.fields import Body, Field, Int, Obj, Shape, Text, columns, params, partial
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page, update_one
from hsid.api.routing import ApiRoutes, Audit, Call


class Calibration(Shape):
    id: int
    camera_id: str
    calibration_type: str
    calibration_data: Any
    created_at: datetime
    updated_at: datetime


class CalibrationBody(Body):
    calibration_type: Annotated[str, Text(50, min_length=1)]
    calibration_data: Obj


CalibrationPatch = partial(CalibrationBody)
CalibrationPath = params(CameraPath, calibration_id=(Annotated[int, Int(ge=1)],
                                                    Field(description="calibration id")))

CalibrationQuery = params(Paged, calibration_type=(Annotated[str, Text(50)], None))


CALIBRATION_COLUMNS = columns(Calibration)
SELECT_CALIBRATION = (
    "SELECT " + CALIBRATION_COLUMNS + " FROM user_calibrations WHERE id = $1 AND camera_id = $2"
)
INSERT_CALIBRATION = (
    "INSERT INTO user_calibrations (camera_id, calibration_type, calibration_data) "
    "VALUES ($1, $2, $3) RETURNING " + CALIBRATION_COLUMNS
)
UPDATE_CALIBRATION = (
    "UPDATE user_calibrations SET {sets}, updated_at = now() WHERE id = $1 AND camera_id = $2 "
    "RETURNING " + CALIBRATION_COLUMNS
)
DELETE_CALIBRATION = (
    "DELETE FROM user_calibrations WHERE id = $1 AND camera_id = $2 RETURNING id"
)
LIST_CALIBRATIONS = Listing(
    select="SELECT " + CALIBRATION_COLUMNS + " FROM user_calibrations {where} "
           "ORDER BY id LIMIT {limit} OFFSET {offset}",
    table="user_calibrations",
    filters={"camera_id": "camera_id = {}", "calibration_type": "calibration_type = {}"},
)

api = ApiRoutes("calibrations")


@api.get("/api/cameras/{camera_id}/calibrations", "List a camera's calibrations",
         path_params=CameraPath, query=CalibrationQuery, response=Page[Calibration])
async def list_calibrations(call: Call) -> dict:
    await require_camera(call.pool, call.path["camera_id"])
    return await fetch_page(call.pool, LIST_CALIBRATIONS, {**call.query, **call.path})


@api.post("/api/cameras/{camera_id}/calibrations", "Add a calibration to a camera",
          path_params=CameraPath, body=CalibrationBody, status=201,
          response=Calibration,
          audit=Audit("calibration_created", "calibration"))
async def create_calibration(call: Call) -> asyncpg.Record:
    await require_camera(call.pool, call.path["camera_id"])
    row = await call.pool.fetchrow(INSERT_CALIBRATION, call.path["camera_id"],
                                   call.body["calibration_type"], call.body["calibration_data"])
    call.audit(row["id"], camera_id=call.path["camera_id"])
    return row


@api.get("/api/cameras/{camera_id}/calibrations/{calibration_id}", "Get a calibration",
         path_params=CalibrationPath, response=Calibration)
async def get_calibration(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_CALIBRATION, call.path["calibration_id"],
                           call.path["camera_id"], what="calibration")


@api.patch("/api/cameras/{camera_id}/calibrations/{calibration_id}", "Change a calibration",
           path_params=CalibrationPath, body=CalibrationPatch, response=Calibration,
           audit=Audit("calibration_updated", "calibration", "calibration_id"))
async def update_calibration(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_CALIBRATION, call.body,
                            call.path["calibration_id"], call.path["camera_id"],
                            what="calibration")


@api.delete("/api/cameras/{camera_id}/calibrations/{calibration_id}", "Delete a calibration",
            path_params=CalibrationPath, status=204,
            audit=Audit("calibration_deleted", "calibration", "calibration_id"))
async def delete_calibration(call: Call) -> None:
    await fetch_one(call.pool, DELETE_CALIBRATION, call.path["calibration_id"],
                    call.path["camera_id"], what="calibration")
