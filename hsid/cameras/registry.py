"""Cameras: ids from their names, registration, status, and which files may be read."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import unicodedata
from pathlib import Path

import asyncpg
import structlog

from hsid.cameras.layout import PATTERN, CameraSource
from hsid.core.errors import InvalidInput

log = structlog.get_logger(__name__)

ONLINE, OFFLINE, ERROR = "online", "offline", "error"

# Latin letters that Unicode does not split into a base letter and marks, so NFKD alone would
# drop them ("Indkørsel" would become "indkrsel"). Other scripts have no ASCII reading that a
# table this size could give; their ids take the hash suffix instead (see camera_ids).
ASCII_FOLDS = str.maketrans({
    "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "ẞ": "SS",
    "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH",
    "ı": "i", "ħ": "h", "Ħ": "H", "ŧ": "t", "Ŧ": "T", "ŋ": "ng", "Ŋ": "NG",
})
# A slug is cut to this length so that the longest id (slug, "-", the longest suffix) stays
# within the API's 64 characters.
SLUG_MAX_CHARS = 40
# Hex digits of the name's SHA-256 tried, in turn, as the suffix of a taken or empty slug:
# 6 (16.7 million values) makes a clash between two names of one slug already unlikely.
SUFFIX_LENGTHS = (6, 8, 10, 12, 16)
EMPTY_SLUG_STEM = "cam"  # "前门" -> "cam-3fa2c1"

# An id already taken is left alone: the caller tries the next id (camera_ids).
INSERT_CAMERA = """
INSERT INTO cameras (id, name, folder_path) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
SELECT_CAMERAS_IN_FOLDER = """
SELECT id, name FROM cameras WHERE folder_path = $1 ORDER BY created_at, id
"""
SELECT_CAMERAS_NAMED = "SELECT id, name FROM cameras WHERE name = $1 ORDER BY created_at, id"

# One statement reads the old status and writes the new one, so the status-change log line
# is exact even when the API changes the row at the same moment.
UPDATE_CAMERA_SEEN = """
UPDATE cameras AS c SET last_seen_at = now(), status = 'online'
FROM (SELECT id, status FROM cameras WHERE id = $1 FOR UPDATE) AS old
WHERE c.id = old.id
RETURNING old.status
"""
UPDATE_CAMERA_STATUS = """
UPDATE cameras AS c SET status = $2
FROM (SELECT id, status FROM cameras WHERE id = $1 FOR UPDATE) AS old
WHERE c.id = old.id AND old.status <> $2
RETURNING old.status
"""
SELECT_CAMERA_STATES = """
SELECT id, folder_path,
       extract(epoch FROM now() - coalesce(last_seen_at, created_at))::float8 AS idle_seconds
FROM cameras
"""


def camera_slug(name: str) -> str:
    """The ASCII slug of a camera name; empty when nothing is left ("前门", "!!!").

    Accents are folded (NFKD, then ASCII_FOLDS for ø, æ, ß, ...), then lower case, spaces
    and dashes to `_`, only `[a-z0-9_]` kept: "Indkørsel" gives "indkorsel", "Front Door-2"
    "front_door_2". Never contains `-`, so a suffixed id cannot equal another name's slug.
    """
    folded = unicodedata.normalize("NFKD", name.translate(ASCII_FOLDS))
    plain = "".join(char for char in folded if not unicodedata.combining(char))
    slug = re.sub(r"[^a-z0-9_]", "", re.sub(r"[ \-]", "_", plain.lower()))
    return slug[:SLUG_MAX_CHARS] if slug.strip("_") else ""


def camera_ids(name: str) -> list[str]:
    """The ids a camera of this name may have, in order of preference: the slug, then the
    slug (or "cam") with a suffix from the name's SHA-256, longer and longer.

    Pure: the same name always gives the same list (the hash is of its NFC form, so a folder
    name in decomposed Unicode, as macOS clients write it, gives the same ids).
    """
    slug = camera_slug(name)
    digest = hashlib.sha256(unicodedata.normalize("NFC", name).encode()).hexdigest()
    stem = slug or EMPTY_SLUG_STEM
    return ([slug] if slug else []) + [f"{stem}-{digest[:n]}" for n in SUFFIX_LENGTHS]


def normalize_camera_id(name: str) -> str:
    """The preferred id for a camera name: its slug, or `cam-<hash>` when the slug is empty.
    Whether it is free is for the caller to find out (register_camera tries the next)."""
    return camera_ids(name)[0]


def refusal(path: Path, root: Path) -> str | None:
    """Why a complete file may not be taken (symlinks, escapes from the root), or None.

    Blocking.
    """
    if path.is_symlink():
        return "symlink"
    if not path.resolve().is_relative_to(root.resolve()):
        return "outside_camera_root"
    if (root / path.relative_to(root).parts[0]).is_symlink():
        return "symlinked_camera_folder"  # inside the root, but the same camera twice
    return None


async def register_camera(pool: asyncpg.Pool, source: CameraSource) -> str:
    """The id of the camera `source` feeds, registering one when it has none; idempotent.

    The camera already registered for the source wins, so ids are stable across restarts
    and upgrades whatever the current rules would give (owned_camera). Otherwise the first
    free id of camera_ids(source.name) is taken: a taken slug gets the hash suffix, so two
    folders never become one camera. The row keeps the name exactly as found. Raises
    InvalidInput only when every id is taken (five hash lengths: not in practice).
    """
    if (known := await owned_camera(pool, source)) is not None:
        return known
    taken: list[str] = []
    for camera_id in camera_ids(source.name):
        if await pool.fetchval(INSERT_CAMERA, camera_id, source.name, str(source.folder)):
            log.info("camera_registered", camera=camera_id, name=source.name,
                     folder=str(source.folder), source=source.kind, ids_taken=taken)
            return camera_id
        taken.append(camera_id)
    raise InvalidInput(f"camera {source.name!r}: ids {', '.join(taken)} are all taken",
                       field="name")


async def owned_camera(pool: asyncpg.Pool, source: CameraSource) -> str | None:
    """The id of the camera already registered for `source`, or None.

    A pattern camera is known by its name (the same camera may upload anywhere), or by its
    own folder when its name was read from one (`NVR/Camera 01`), so a renamed one is found.
    A folder (or the root camera) is known by its folder_path; several rows may have it
    (the root holds the pattern cameras named in file names), so the row named like the
    folder comes first, then one whose id comes from that name, then, for a folder of its
    own, the oldest: a camera registered through the API keeps its own id and name.
    """
    if source.kind == PATTERN:
        if rows := await pool.fetch(SELECT_CAMERAS_NAMED, source.name):
            return rows[0]["id"]
        if not source.own_folder:
            return None
    rows = await pool.fetch(SELECT_CAMERAS_IN_FOLDER, str(source.folder))
    own_ids = camera_ids(source.name)
    for row in rows:
        if row["name"] == source.name:
            return row["id"]
    for row in rows:
        if row["id"] in own_ids:
            return row["id"]
    return rows[0]["id"] if rows and source.own_folder else None


async def mark_seen(pool: asyncpg.Pool, camera_id: str) -> bool:
    """Record that an image from the camera was accepted: last_seen_at now, status online.

    A new image is a change the watcher sees, so it ends an offline, error or manual status.
    Returns False when there is no such camera.
    """
    old_status = await pool.fetchval(UPDATE_CAMERA_SEEN, camera_id)
    if old_status is None:
        return False
    if old_status != ONLINE:
        log.info(
            "camera_status_changed", camera=camera_id, old_status=old_status, status=ONLINE,
            reason="image_received",
        )
    return True


async def set_status_from_watcher(
    pool: asyncpg.Pool, camera_id: str, status: str, reason: str
) -> bool:
    """Set the status the watcher observed; returns whether it changed (and then logs it).

    Callers invoke this only when their own view changes, so a status set by hand through
    the API stands until the watcher sees something new.
    """
    old_status = await pool.fetchval(UPDATE_CAMERA_STATUS, camera_id, status)
    if old_status is None:
        return False
    level = log.warning if status == ERROR else log.info
    level(
        "camera_status_changed", camera=camera_id, old_status=old_status, status=status,
        reason=reason,
    )
    return True


def folder_view(folder: Path, idle_seconds: float, offline_after_s: float) -> tuple[str, str]:
    """The status a camera's folder suggests, and why; blocking (it looks at the folder).

    `idle_seconds` is the time since the last image (or since registration); an
    `offline_after_s` of 0 means a quiet camera never goes offline.
    """
    if not folder.is_dir():
        return ERROR, "folder_missing"
    if not os.access(folder, os.R_OK | os.X_OK):
        return ERROR, "folder_unreadable"
    if offline_after_s and idle_seconds >= offline_after_s:
        return OFFLINE, "no_upload"
    return ONLINE, "folder_ok"


class CameraStatusMonitor:
    """Turns what the watcher sees into camera statuses, writing only when its view changes.

    Remembering the last view means a status set by hand through the API stands until the
    watcher sees something new (the folder vanishing, an upload gap, an image).
    """

    def __init__(self, pool: asyncpg.Pool, offline_after_minutes: float) -> None:
        self._pool = pool
        self._offline_after_s = offline_after_minutes * 60
        self._views: dict[str, str] = {}  # camera id -> status the watcher last saw

    def image_seen(self, camera_id: str) -> None:
        """An image was accepted (and mark_seen has set the camera online)."""
        self._views[camera_id] = ONLINE

    async def check(self) -> None:
        """Apply the folder-gone (`error`) and no-upload (`offline`) rules to every camera."""
        rows = await self._pool.fetch(SELECT_CAMERA_STATES)
        views = await asyncio.to_thread(
            lambda: [
                (row["id"], *folder_view(
                    Path(row["folder_path"]), row["idle_seconds"], self._offline_after_s
                ))
                for row in rows
            ]
        )
        for camera_id, view, reason in views:
            if self._views.get(camera_id) == view:
                continue
            self._views[camera_id] = view
            if view != ONLINE:  # only a new image brings a camera back online
                await set_status_from_watcher(self._pool, camera_id, view, reason)
