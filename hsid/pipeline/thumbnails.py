"""Thumbnails: one JPEG crop per detection, stored under the state dir."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import structlog

from hsid.core.errors import InvalidInput, PermanentError
from hsid.pipeline.detector import DecodedImage, ObjectDetection

log = structlog.get_logger(__name__)

MARGIN = 0.10  # of the box's width/height, on each side: a little context around the object
JPEG_QUALITY = 85  # small files that still show a face or a plate
THUMBNAILS_DIR = "thumbnails"


def crop(image: DecodedImage, det: ObjectDetection, margin: float = MARGIN) -> np.ndarray:
    """The detection's box plus `margin` (of its width and height) on each side, clipped to
    the image: BGR pixels, at least 1x1, a view into `image.pixels` (copy before changing it).

    The box is in original pixels; when `image` was decoded at reduced size the crop is
    taken from the reduced pixels at the same place.
    """
    rows, cols = image.pixels.shape[:2]
    scale_x, scale_y = cols / image.width, rows / image.height
    margin_x, margin_y = det.bbox_width * margin, det.bbox_height * margin
    left = min(cols - 1, max(0, math.floor((det.bbox_x - margin_x) * scale_x)))
    top = min(rows - 1, max(0, math.floor((det.bbox_y - margin_y) * scale_y)))
    right = min(cols, math.ceil((det.bbox_x + det.bbox_width + margin_x) * scale_x))
    bottom = min(rows, math.ceil((det.bbox_y + det.bbox_height + margin_y) * scale_y))
    return image.pixels[top : max(bottom, top + 1), left : max(right, left + 1)]


def make_thumbnail(image: DecodedImage, det: ObjectDetection, max_side: int) -> bytes:
    """JPEG bytes of the detection's box plus a 10% margin, longest side at most `max_side`.

    Blocking; run it in a thread.
    """
    pixels = crop(image, det)
    longest = max(pixels.shape[:2])
    if longest > max_side:
        factor = max_side / longest
        size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise PermanentError(
            f"thumbnail of {pixels.shape[1]}x{pixels.shape[0]} could not be encoded")
    return encoded.tobytes()


def thumbnail_path(state_dir: Path, camera_id: str, detected_at: datetime, name: str) -> Path:
    """`<state_dir>/thumbnails/<camera_id>/<YYYY-MM-DD>/<name>.jpg`, the date in UTC.

    A naive `detected_at` is taken as UTC, as every hsid timestamp is. Raises InvalidInput
    when `camera_id` or `name` could climb out of the thumbnails folder.
    """
    for field, value in (("camera_id", camera_id), ("name", name)):
        if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
            raise InvalidInput(f"{field} {value!r} is not a plain file name", field=field)
    if detected_at.tzinfo is not None:
        detected_at = detected_at.astimezone(UTC)
    day = detected_at.strftime("%Y-%m-%d")
    return Path(state_dir) / THUMBNAILS_DIR / camera_id / day / f"{name}.jpg"
