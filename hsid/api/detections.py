"""Detection routes: filtered lists, one detection, and its thumbnail and source image
(as stored, or annotated with its boxes and scaled)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from hsid.api import files
from hsid.api.fields import Bool, Int, Num, Shape, Str, out
from hsid.api.queries import TIME_RANGE, Listing, fetch_one, fetch_page, page_of, paged
from hsid.api.routing import ApiRoutes, Call
from hsid.imaging.evidence import Evidence

DETECTION_COLUMNS = (
    "id, camera_id, file_path, file_type, detected_at, object_type, confidence, "
    "bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path, captured_at"
)
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

DETECTION_PATH = {"detection_id": Int(minimum=1, description="detection id")}
# ?width= of the pictures hsid renders: up to 8K; never wider than the original.
PICTURE_WIDTH = Int(minimum=16, maximum=7680,
                    description="scale to this many pixels wide (never wider than the original)")
DETECTION = Shape({
    "id": out("integer"),
    "camera_id": out("string"),
    "file_path": out("string"),
    "file_type": out("string", nullable=True),
    "detected_at": out("string", format="date-time"),
    "object_type": out("string", nullable=True),
    "confidence": out("number", nullable=True),
    "bbox_x": out("integer", nullable=True),
    "bbox_y": out("integer", nullable=True),
    "bbox_width": out("integer", nullable=True),
    "bbox_height": out("integer", nullable=True),
    "thumbnail_path": out("string", nullable=True),
    # hsid's extension: when the snapshot was taken (null for rows from before it was read)
    "captured_at": out("string", format="date-time", nullable=True),
})

api = ApiRoutes("detections")


@api.get(
    "/api/detections", "List detections, newest first", response=page_of(DETECTION),
    query=paged({
        "camera_id": Str(max_length=64),
        "object_type": Str(max_length=64),
        "min_confidence": Num(minimum=0.0, maximum=1.0),
        **TIME_RANGE,
    }),
)
async def list_detections(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_DETECTIONS, call.query)


@api.get("/api/detections/{detection_id}", "Get a detection", path_params=DETECTION_PATH,
         response=DETECTION)
async def get_detection(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_DETECTION, call.path["detection_id"],
                           what="detection")


async def _stored_file(call: Call, sql: str) -> web.StreamResponse:
    """Serve the path stored in the row, only if it is an image inside the state dir or the
    camera root; the client never names a path, it only picks the detection."""
    stored = await fetch_one(call.pool, sql, call.path["detection_id"], what="detection")
    path = await files.safe_image(stored[0], files.roots(call.runtime.config.paths))
    return files.image_response(path)


@api.get("/api/detections/{detection_id}/thumbnail", "The detection's thumbnail crop",
         path_params=DETECTION_PATH, media_types=files.IMAGE_MEDIA_TYPES)
async def get_thumbnail(call: Call) -> web.StreamResponse:
    return await _stored_file(call, SELECT_THUMBNAIL_PATH)


def evidence(call: Call) -> Evidence:
    config = call.runtime.config
    return Evidence(call.pool, config.paths, config.detector.max_pixels)


def jpeg_response(jpeg: bytes) -> web.Response:
    return web.Response(body=jpeg, content_type="image/jpeg")


@api.get("/api/detections/{detection_id}/image", "The detection's source image",
         path_params=DETECTION_PATH, media_types=files.IMAGE_MEDIA_TYPES,
         query={"annotate": Bool(default=False, description="draw the boxes, class labels "
                                 "and confidences of the image's detections (JPEG)"),
                "width": PICTURE_WIDTH})
async def get_image(call: Call) -> web.StreamResponse:
    """The file as stored; with annotate=true or a width, a JPEG rendered from it."""
    if not call.query["annotate"] and call.query["width"] is None:
        return await _stored_file(call, SELECT_IMAGE_PATH)
    picture = await evidence(call).detection_picture(
        call.path["detection_id"], call.query["width"], boxes=call.query["annotate"])
    return jpeg_response(picture.jpeg)
