"""Pictures for tests: drawn snapshots with known content, the rows that point at them, and
pixel checks that hold through JPEG compression."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import cv2
import numpy as np

from hsid.imaging.annotate import CLASS_COLOURS

GREY = 128

INSERT_DETECTION = """
INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, confidence,
                        bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path)
VALUES ($1, $2, 'image/jpeg', $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id
"""


def plain_jpeg(shade: int = GREY, width: int = 800, height: int = 600) -> bytes:
    """A JPEG of one grey shade."""
    pixels = np.full((height, width, 3), shade, np.uint8)
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def grey_jpeg(width: int = 800, height: int = 600) -> bytes:
    return plain_jpeg(GREY, width, height)


def decoded(jpeg: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None, "a JPEG that decodes"
    return pixels.astype(int)


def near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """Closer to `colour` than to the grey background or any other class's colour (JPEG
    keeps colour at half resolution, so a thin line's colour is only roughly kept)."""
    others = [(GREY, GREY, GREY), *(c for c in CLASS_COLOURS.values() if c != colour)]
    distance = np.abs(pixel - np.array(colour)).sum()
    return all(distance < np.abs(pixel - np.array(other)).sum() for other in others)


def is_grey(pixel: np.ndarray) -> bool:
    return bool(np.abs(pixel - GREY).max() < 12)


async def detections_of_one_image(db: asyncpg.Pool, path: Path, *found: tuple,
                                  at: datetime | None = None, camera_id: str = "front_door",
                                  thumbnail: Path | None = None) -> list[int]:
    """Rows as the detect worker stores one image's detections: one detected_at, one path;
    each of `found` is (object_type, confidence, x, y, width, height)."""
    moment = at or datetime.now(UTC)
    return [await db.fetchval(INSERT_DETECTION, camera_id, str(path), moment, *row,
                              None if thumbnail is None else str(thumbnail))
            for row in found]


async def event_of(db: asyncpg.Pool, ids: list[int], camera_id: str = "front_door") -> int:
    return await db.fetchval(
        "INSERT INTO events (batch_id, camera_id, started_at, risk_score, risk_level, summary, "
        "detection_ids) VALUES ($1, $2, now(), 70, 'high', 'x', $3) RETURNING id",
        uuid.uuid4().hex, camera_id, json.dumps(ids))
