"""Snapshots: an upload is known by its content, recorded durably once it is dealt with.

Every distinct upload is processed once, wherever and under whatever name it arrives: the
watcher hashes it (SHA256) and the detect worker records it in `snapshots` (hsid's
extension of the reference) in the transaction that stores its detections, or when it
dead-letters it. So a restart never queues a processed image again, those that gave no
detection included, and never waits on a broken file twice.

When hsid copies a snapshot: a camera that re-uses file names (`snapshot.jpg` every minute,
or `tmp.jpg` renamed onto `camera.jpg`) would overwrite the bytes a detection points at.
The watcher therefore copies an upload into `<state_dir>/snapshots/<camera>/<date>/` when
its path already held another snapshot, and from then on every upload of that camera (the
camera is known to re-use names once any of its snapshots has a copy). Detections point at
the copy. The first upload of a re-used name is not copied, since nothing yet tells that its
name will come again: if it is overwritten later, its detections keep their thumbnails but
its full image is gone. The daily cleanup deletes copies with the rows older than
`retention.days`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from hsid.core.constants import SNAPSHOTS_DIR
from hsid.pipeline.state_files import StateFileWriter

# Snapshots under this size hash faster than a thread hand-off; bigger ones go to a thread
# so that the event loop never waits on hashing.
HASH_INLINE_MAX_BYTES = 256 * 1024
PROCESSED, DEAD_LETTERED = "processed", "dead_lettered"  # snapshots.outcome

SELECT_PROCESSED = """
SELECT detection_ids FROM snapshots WHERE sha256 = $1 AND outcome = 'processed' LIMIT 1
"""
SELECT_KNOWN_FILES = """
SELECT file_path, size, mtime_ns FROM snapshots WHERE file_path = any($1::text[])
"""
SELECT_NEEDS_COPY = """
SELECT EXISTS (SELECT 1 FROM snapshots WHERE file_path = $1)
    OR EXISTS (SELECT 1 FROM snapshots WHERE camera_id = $2 AND image_path <> file_path)
"""
INSERT_SNAPSHOT = """
INSERT INTO snapshots (sha256, file_path, camera_id, image_path, size, mtime_ns,
                       detection_ids, outcome, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (sha256, file_path) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Upload:
    """What the watcher learnt of an upload, carried in its detection_queue item.

    `image_path` holds the bytes to analyse (the upload itself, or hsid's copy); `size`
    and `mtime_ns` are the upload's when taken, so a restart can tell it without hashing.
    """

    sha256: str
    image_path: str
    size: int
    mtime_ns: int

    def item_fields(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "image_path": self.image_path, "size": self.size,
                "mtime_ns": self.mtime_ns}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_path(state_dir: Path, camera_id: str, sha256: str, suffix: str,
              now: datetime | None = None) -> Path:
    """`<state_dir>/snapshots/<camera>/<YYYY-MM-DD UTC>/<sha256><suffix>`: one file per
    content, so copies of different uploads never collide and a repeat writes the same."""
    day = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")
    return Path(state_dir) / SNAPSHOTS_DIR / camera_id / day / f"{sha256}{suffix.lower()}"


async def known_files(pool: asyncpg.Pool, paths: list[Path]) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the given files as they were when recorded: a file still
    so was dealt with already; another file under a recorded path is a new upload."""
    rows = await pool.fetch(SELECT_KNOWN_FILES, [str(path) for path in paths])
    return {(row["file_path"], row["size"], row["mtime_ns"]) for row in rows}


async def is_processed(pool: asyncpg.Pool | asyncpg.Connection, sha256: str) -> list[int] | None:
    """The detection ids of the snapshot with this content, or None if none was processed."""
    row = await pool.fetchrow(SELECT_PROCESSED, sha256)
    return None if row is None else list(row["detection_ids"])


async def needs_copy(pool: asyncpg.Pool, path: Path, camera_id: str) -> bool:
    """Whether this upload is copied: its path held a snapshot before, or its camera is
    known to re-use names (see the module docstring)."""
    return bool(await pool.fetchval(SELECT_NEEDS_COPY, str(path), camera_id))


async def record(conn: asyncpg.Connection | asyncpg.Pool, upload: Upload, file_path: str,
                 camera_id: str, detection_ids: list[int], reason: str | None = None) -> None:
    """Record the snapshot as processed (reason None) or dead-lettered; idempotent."""
    await conn.execute(INSERT_SNAPSHOT, upload.sha256, file_path, camera_id, upload.image_path,
                       upload.size, upload.mtime_ns, detection_ids,
                       PROCESSED if reason is None else DEAD_LETTERED, reason)


def read_upload(path: Path) -> tuple[bytes, int, int]:
    """Blocking: the file's bytes, with the size and mtime (ns) of exactly those bytes."""
    with open(path, "rb") as file:
        info = os.fstat(file.fileno())
        return file.read(), info.st_size, info.st_mtime_ns


class Uploads:
    """Reads and identifies uploads for the watcher, and copies those whose names come again.

    `prepare` raises OSError when the file cannot be read (FileNotFoundError when it went).
    A full state dir costs the copy, not the snapshot: it is then analysed where it arrived.
    """

    def __init__(self, pool: asyncpg.Pool, state_dir: Path) -> None:
        self._pool, self._state_dir = pool, state_dir
        self._copies = StateFileWriter("snapshot_copies")

    async def prepare(self, path: Path, camera_id: str) -> Upload | None:
        """The upload at `path`, copied if need be; None when its content was processed."""
        data, size, mtime_ns = await asyncio.to_thread(read_upload, path)
        sha256 = (sha256_of(data) if size <= HASH_INLINE_MAX_BYTES
                  else await asyncio.to_thread(sha256_of, data))
        if await is_processed(self._pool, sha256) is not None:
            return None
        image_path = path
        if size and await needs_copy(self._pool, path, camera_id):
            copy = copy_path(self._state_dir, camera_id, sha256, path.suffix)
            if await asyncio.to_thread(self._copies.write, copy, data):
                image_path = copy
        return Upload(sha256, str(image_path), size, mtime_ns)
