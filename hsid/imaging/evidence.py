"""Evidence: which snapshot shows a detection or an event, read safely and annotated.

A detection's picture is the image it was found in (`detections.file_path`: the upload, or
hsid's copy under <state_dir>/snapshots when the camera re-uses file names), with every
detection of that image drawn. An event's picture is the one of its most telling
detection: its surest person, else its surest detection of any class.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from hsid.core.config import PathsConfig
from hsid.core.errors import NotFound, PermanentError
from hsid.imaging.annotate import Box, annotate
from hsid.imaging.files import roots, safe_image

# Decoding and encoding a large snapshot takes a core for tens of milliseconds: a burst of
# requests must not take every core from detection. Taken in the worker thread, so it holds
# for every event loop and every user (API, Apprise, Home Assistant) of the process.
MAX_CONCURRENT_RENDERS = 2
_RENDERS = threading.BoundedSemaphore(MAX_CONCURRENT_RENDERS)

DETECTION_FIELDS = ("id, camera_id, file_path, detected_at, object_type, confidence, "
                    "bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path")
SELECT_DETECTION = f"SELECT {DETECTION_FIELDS} FROM detections WHERE id = $1"
# The detections of one image: the detect worker stores them together, with one detected_at.
SELECT_SAME_IMAGE = f"""
SELECT {DETECTION_FIELDS} FROM detections
WHERE camera_id = $1 AND detected_at = $2 AND file_path = $3
ORDER BY id
"""
SELECT_EVENT_DETECTION_IDS = "SELECT detection_ids FROM events WHERE id = $1"
SELECT_TELLING_DETECTION = f"""
SELECT {DETECTION_FIELDS} FROM detections WHERE id = any($1::integer[])
ORDER BY coalesce(object_type = 'person', false) DESC, confidence DESC NULLS LAST, id
LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Picture:
    """An annotated JPEG and the detection it was made for."""

    jpeg: bytes
    detection: asyncpg.Record  # DETECTION_FIELDS


def box_of(row: asyncpg.Record) -> Box | None:
    """A detection row's box, or None when the row has none to draw."""
    x, y, w, h = row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"]
    if None in (x, y, w, h):
        return None
    return Box(row["object_type"] or "object", float(row["confidence"] or 0.0), x, y, w, h)


def event_detection_ids(text: str | None) -> list[int]:
    """events.detection_ids (JSON text) as ids; empty when absent or malformed."""
    try:
        ids = json.loads(text) if text else []
    except ValueError:
        return []
    if not isinstance(ids, list):
        return []
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i > 0]


class Evidence:
    """Finds and renders the pictures of detections and events; shared by the API, the
    Apprise channel and Home Assistant. Methods raise NotFound, with the reason, when there
    is no picture to give (no such row, no file, a file that no longer decodes)."""

    def __init__(self, pool: asyncpg.Pool, paths: PathsConfig, max_pixels: int) -> None:
        self._pool, self._roots, self._max_pixels = pool, roots(paths), max_pixels

    async def telling_detection(self, event_id: int) -> asyncpg.Record | None:
        """The event's surest person, else its surest detection; None if it has none."""
        text = await self._pool.fetchval(SELECT_EVENT_DETECTION_IDS, event_id)
        ids = event_detection_ids(text)
        return await self._pool.fetchrow(SELECT_TELLING_DETECTION, ids) if ids else None

    async def event_picture(self, event_id: int, width: int | None = None) -> Picture:
        """The event's most telling image, annotated, at most `width` pixels wide."""
        exists = await self._pool.fetchval("SELECT true FROM events WHERE id = $1", event_id)
        if not exists:
            raise NotFound(f"event {event_id} not found")
        detection = await self.telling_detection(event_id)
        if detection is None:
            raise NotFound(f"event {event_id} has no detections to show")
        return await self._render(detection, width, boxes=True)

    async def detection_picture(self, detection_id: int, width: int | None = None, *,
                                boxes: bool = True) -> Picture:
        """The detection's source image with every detection of that image drawn (none
        with boxes=False), at most `width` pixels wide."""
        detection = await self._pool.fetchrow(SELECT_DETECTION, detection_id)
        if detection is None:
            raise NotFound(f"detection {detection_id} not found")
        return await self._render(detection, width, boxes=boxes)

    async def _render(self, detection: asyncpg.Record, width: int | None, *,
                      boxes: bool) -> Picture:
        path = await safe_image(detection["file_path"], self._roots)
        drawn: list[Box] = []
        if boxes:
            rows = await self._pool.fetch(SELECT_SAME_IMAGE, detection["camera_id"],
                                          detection["detected_at"], detection["file_path"])
            drawn = [box for row in rows or [detection] if (box := box_of(row)) is not None]
        jpeg = await asyncio.to_thread(self._annotate_file, path, drawn, width)
        return Picture(jpeg, detection)

    def _annotate_file(self, path: Path, boxes: list[Box], width: int | None) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as err:  # gone since it was checked
            raise NotFound("file not found") from err
        try:
            with _RENDERS:
                return annotate(data, boxes, max_pixels=self._max_pixels, width=width)
        except PermanentError as err:
            raise NotFound(f"the stored image can't be decoded: {err}") from err


def picture_links(public_url: str, event_id: int | None,
                  thumbnail_of: int | None) -> dict[str, str | None]:
    """snapshot_url (the event's annotated snapshot) and thumbnail_url (its telling
    detection's crop): absolute under `public_url`, paths when it is empty."""
    base = public_url.rstrip("/")
    return {
        "snapshot_url": None if event_id is None else f"{base}/api/events/{event_id}/snapshot",
        "thumbnail_url": None if thumbnail_of is None
        else f"{base}/api/detections/{thumbnail_of}/thumbnail",
    }
