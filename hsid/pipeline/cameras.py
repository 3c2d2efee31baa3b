"""Camera folders: ids from their names, registration, status, and which files are images."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import structlog

from hsid.errors import InvalidInput

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
TEMP_SUFFIXES = frozenset({".part", ".tmp", ".filepart"})  # FTP servers upload under these

ONLINE, OFFLINE, ERROR = "online", "offline", "error"

# A new folder becomes a camera; a second folder whose name normalises to the same id
# shares that camera rather than failing (the conflict is logged).
INSERT_CAMERA = """
INSERT INTO cameras (id, name, folder_path) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
SELECT_CAMERA_FOLDER = "SELECT folder_path FROM cameras WHERE id = $1"

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


def normalize_camera_id(folder_name: str) -> str:
    """The camera id for a folder: lower case, spaces and dashes to `_`, only `[a-z0-9_]` kept.

    "Front Door-2" gives "front_door_2". Raises InvalidInput when nothing is left, since a
    camera needs an id that the API, thumbnails and Redis keys can use as-is.
    """
    camera_id = re.sub(r"[^a-z0-9_]", "", re.sub(r"[ \-]", "_", folder_name.lower()))
    if not camera_id:
        raise InvalidInput(
            f"camera folder name {folder_name!r} leaves no usable id (needs a-z, 0-9, _)",
            field="folder_name",
        )
    return camera_id


def ignore_reason(path: Path, root: Path) -> str | None:
    """Why an event's path is not a candidate image, or None when it is one."""
    parts = path.relative_to(root).parts
    if len(parts) < 2:
        return "not_in_camera_folder"
    if any(part.startswith(".") for part in parts):
        return "temporary_name"  # also hidden folders, where some FTP servers stage uploads
    suffix = path.suffix.lower()
    if suffix in TEMP_SUFFIXES:
        return "temporary_name"
    return None if suffix in IMAGE_SUFFIXES else "not_an_image"


def scan_images(folders: Iterable[Path], root: Path, newer_than: float) -> list[Path]:
    """Candidate images under `folders` modified after `newer_than`, oldest first; blocking."""
    found: list[tuple[float, Path]] = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in filenames:
                path = Path(dirpath, name)
                with contextlib.suppress(OSError):
                    mtime = os.stat(path, follow_symlinks=False).st_mtime
                    if mtime >= newer_than and ignore_reason(path, root) is None:
                        found.append((mtime, path))
    return [path for _, path in sorted(found)]


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


async def register_camera(pool: asyncpg.Pool, folder: Path) -> str:
    """Ensure a cameras row exists for `folder` and return its id; idempotent.

    An existing row is left as it is (its name, status and path may have been edited
    through the API). Raises InvalidInput when the folder name gives no id.
    """
    camera_id = normalize_camera_id(folder.name)
    if await pool.fetchval(INSERT_CAMERA, camera_id, folder.name, str(folder)) is not None:
        log.info("camera_registered", camera=camera_id, folder=str(folder))
        return camera_id
    known_folder = await pool.fetchval(SELECT_CAMERA_FOLDER, camera_id)
    if known_folder != str(folder):
        log.warning(
            "camera_folder_shared", camera=camera_id, folder=str(folder), known_folder=known_folder
        )
    return camera_id


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
