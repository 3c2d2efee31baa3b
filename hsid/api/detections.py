"""Detection routes: filtered lists, one detection, and its thumbnail and source image
(as stored, or annotated with its boxes and scaled)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, TypeAlias

import asyncpg
from aiohttp import web

from hsid.api.fields import Absent, Field, Int, Num, Shape, Text, columns, params
from hsid.api.files import image_response
from hsid.api.queries import Listing, Page, TimeRange, fetch_one, fetch_page
from hsid.api.routing import ApiRoutes, Call
from hsid.imaging import files
from hsid.imaging.evidence import Evidence


class Detection(Shape):
    id: int
    camera_id: str
    file_path: str
    file_type: str | None
    detected_at: datetime
    object_type: str | None
    confidence: float | None
    bbox_x: int | None
    bbox_y: int | None
    bbox_width: int | None
    bbox_height: int | None
    thumbnail_path: str | None
    # hsid's extension: when the snapshot was taken (null for rows from before it was read)
    captured_at: datetime | None


DETECTION_COLUMNS = columns(Detection)
SELECT_DETECTION = "SELECT " + DETECTION_COLUMNS + " FROM detections WHERE id = $1"
SELECT_THUMBNAIL_PATH = "SELECT thumbnail_path FROM detections WHERE id = $1"
SELECT_IMAGE_PATH = "SELECT file_path FROM detections WHERE id = $1"
LIST_DETECTIONS = Listing(
    select="SELECT " + DETECTION_COLUMNS + " FROM detections {where} "
           "ORDER BY detected_at DESC, id DESC LIMIT {limit} OFFSET {offset}",
    table="detections",
    filters={
        "camera_id": "camera_id = {}",
        "object_type": "object_type = {}",
        "min_confidence": "confidence >= {}",
        "start": "detected_at >= {}",
        "end": "detected_at < {}",
    },
)


DetectionPath = params(detection_id=(Annotated[int, Int(ge=1)], Field(description="detection id")))


# ?width= of the pictures hsid renders: up to 8K; never wider than the original.
PictureWidth: TypeAlias = Annotated[int, Int(16, 7680)]
WIDTH = Absent("scale to this many pixels wide (never wider than the original)")

DetectionQuery = params(TimeRange, camera_id=(Annotated[str, Text(64)], None),
                                   object_type=(Annotated[str, Text(64)], None),
                                   min_confidence=(Annotated[float, Num(0.0, 1.0)], None))


class ImageQuery(Shape):
    annotate: bool = Field(False, description="draw the boxes, class labels and confidences "
                           "of the image's detections (JPEG)")
    width: PictureWidth = WIDTH


api = ApiRoutes("detections")


@api.get("/api/detections", "List detections, newest first", response=Page[Detection],
         query=DetectionQuery)
async def list_detections(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_DETECTIONS, call.query)


@api.get("/api/detections/{detection_id}", "Get a detection", path_params=DetectionPath,
         response=Detection)
async def get_detection(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_DETECTION, call.path["detection_id"],
                           what="detection")


async def _stored_file(call: Call, sql: str) -> web.StreamResponse:
    """Serve the path stored in the row, only if it is an image inside the state dir or the
    camera root; the client never names a path, it only picks the detection."""
    stored = await fetch_one(call.pool, sql, call.path["detection_id"], what="detection")
    path = await files.safe_image(stored[0], files.roots(call.runtime.config.paths))
    return image_response(path)


@api.get("/api/detections/{detection_id}/thumbnail", "The detection's thumbnail crop",
         path_params=DetectionPath, media_types=files.IMAGE_MEDIA_TYPES)
async def get_thumbnail(call: Call) -> web.StreamResponse:
    return await _stored_file(call, SELECT_THUMBNAIL_PATH)


def evidence(call: Call) -> Evidence:
    config = call.runtime.config
    return Evidence(call.pool, config.paths, config.detector.max_pixels)


def jpeg_response(jpeg: bytes) -> web.Response:
    return web.Response(body=jpeg, content_type="image/jpeg")


@api.get("/api/detections/{detection_id}/image", "The detection's source image",
         path_params=DetectionPath, media_types=files.IMAGE_MEDIA_TYPES,
         query=ImageQuery)
async def get_image(call: Call) -> web.StreamResponse:
    """The file as stored; with annotate=true or a width, a JPEG rendered from it."""
    if not call.query["annotate"] and call.query["width"] is None:
        return await _stored_file(call, SELECT_IMAGE_PATH)
    picture = await evidence(call).detection_picture(
        call.path["detection_id"], call.query["width"], boxes=call.query["annotate"])
    return jpeg_response(picture.jpeg)
