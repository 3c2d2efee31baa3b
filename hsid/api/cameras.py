"""Camera routes: list, read, register, rename or set status, delete, and the latest snapshot."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, get_args

import asyncpg
from aiohttp import web

from hsid.api.fields import Absent, Body, Field, Shape, Text, columns, params, partial
from hsid.api.files import image_response
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.cameras.registry import normalize_camera_id
from hsid.core.errors import Conflict, InvalidInput, NotFound
from hsid.imaging import files

Status = Literal["online", "offline", "error"]
STATUSES = get_args(Status)


class Camera(Shape):
    id: str
    name: str
    folder_path: str
    status: Status
    created_at: datetime
    last_seen_at: datetime | None


class CameraBody(Body):
    id: Annotated[str, Text(64, pattern="[a-z0-9_-]{1,64}")] = Absent(
        "lower-case letters, digits, _ and - (default: the ASCII slug of "
                          "the folder name, or of the name; see README, Cameras)")
    name: Annotated[str, Text(min_length=1)]
    folder_path: Annotated[str, Text(1024, min_length=1)] = Absent(
        "folder directly inside the camera root (name or path); "
                          "default: the camera root's folder named like the id")
    status: Status = "online"


CameraPatch = partial(CameraBody, "name", "status")
CameraPath = params(camera_id=(Annotated[str, Text(64)], Field(description="camera id")))

CameraQuery = params(Paged, status=(Status, None))


CAMERA_COLUMNS = columns(Camera)
SELECT_CAMERA = "SELECT " + CAMERA_COLUMNS + " FROM cameras WHERE id = $1"
CAMERA_EXISTS = "SELECT EXISTS (SELECT 1 FROM cameras WHERE id = $1)"
SELECT_FOLDER_CAMERA = "SELECT id FROM cameras WHERE folder_path = $1 ORDER BY created_at LIMIT 1"
INSERT_CAMERA = (
    "INSERT INTO cameras (id, name, folder_path, status) VALUES ($1, $2, $3, $4) "
    "RETURNING " + CAMERA_COLUMNS
)
UPDATE_CAMERA = "UPDATE cameras SET {sets} WHERE id = $1 RETURNING " + CAMERA_COLUMNS
# Detections, events (and their alerts), zones, baselines, scene changes and calibrations
# go with the camera through ON DELETE CASCADE.
DELETE_CAMERA = "DELETE FROM cameras WHERE id = $1 RETURNING id"
SELECT_LATEST_IMAGE = """
SELECT file_path FROM detections WHERE camera_id = $1
ORDER BY detected_at DESC, id DESC LIMIT 1
"""
LIST_CAMERAS = Listing(
    select="SELECT " + CAMERA_COLUMNS
           + " FROM cameras {where} ORDER BY id LIMIT {limit} OFFSET {offset}",
    table="cameras",
    filters={"status": "status = {}"},
)

api = ApiRoutes("cameras")


async def require_camera(pool: asyncpg.Pool, camera_id: str) -> None:
    """NotFound unless the camera exists: sub-resources answer 404 for a missing parent."""
    if not await pool.fetchval(CAMERA_EXISTS, camera_id):
        raise NotFound(f"camera {camera_id!r} not found")


def camera_folder(camera_root: Path, given: str | None, camera_id: str) -> str:
    """The absolute folder for a new camera: must be directly inside the camera root, like
    the folders the watcher registers (a path elsewhere would let snapshots read it), and
    spelled as the watcher spells it (absolute), which finds the camera by this folder."""
    root = os.path.abspath(camera_root)
    folder = os.path.normpath(os.path.join(root, given or camera_id))
    if os.path.dirname(folder) != root:
        raise InvalidInput("folder_path must be a folder directly inside the camera root",
                           field="folder_path")
    return folder


@api.get("/api/cameras", "List cameras", query=CameraQuery, response=Page[Camera])
async def list_cameras(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_CAMERAS, call.query)


@api.post("/api/cameras", "Register a camera", body=CameraBody, status=201, response=Camera,
          audit=Audit("camera_created", "camera"))
async def create_camera(call: Call) -> asyncpg.Record:
    """The watcher takes the images of `folder_path` for this camera, under this id. One
    folder is one camera: a folder that already has one is a 409 (delete that one first)."""
    body = call.body
    given_folder = body.get("folder_path")
    camera_id = body.get("id") or normalize_camera_id(
        Path(given_folder).name if given_folder else body["name"])
    call.audit(camera_id)
    folder = camera_folder(call.runtime.config.paths.camera_root, given_folder, camera_id)
    if (owner := await call.pool.fetchval(SELECT_FOLDER_CAMERA, folder)) is not None:
        raise Conflict(f"folder {folder} is already the folder of camera {owner!r}")
    return await call.pool.fetchrow(INSERT_CAMERA, camera_id, body["name"], folder,
                                    body["status"])


@api.get("/api/cameras/{camera_id}", "Get a camera", path_params=CameraPath, response=Camera)
async def get_camera(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_CAMERA, call.path["camera_id"], what="camera")


@api.patch("/api/cameras/{camera_id}", "Rename a camera or set its status",
           path_params=CameraPath, body=CameraPatch, response=Camera,
           audit=Audit("camera_updated", "camera", "camera_id"))
async def update_camera(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_CAMERA, call.body, call.path["camera_id"],
                            what="camera")


@api.delete("/api/cameras/{camera_id}", "Delete a camera and everything recorded for it",
            path_params=CameraPath, status=204,
            audit=Audit("camera_deleted", "camera", "camera_id"))
async def delete_camera(call: Call) -> None:
    await fetch_one(call.pool, DELETE_CAMERA, call.path["camera_id"], what="camera")


@api.get("/api/cameras/{camera_id}/snapshot", "The camera's latest image",
         path_params=CameraPath, media_types=files.IMAGE_MEDIA_TYPES)
async def get_snapshot(call: Call) -> web.StreamResponse:
    """The image of the camera's newest detection; when that file is gone (or there is none
    yet), the newest image in the camera's folder."""
    camera = await get_camera(call)
    paths = call.runtime.config.paths
    latest = await call.pool.fetchval(SELECT_LATEST_IMAGE, camera["id"])
    try:
        path = await files.safe_image(latest, files.roots(paths))
    except NotFound:
        path = await files.newest_image(camera["folder_path"], (paths.camera_root,))
    return image_response(path)
