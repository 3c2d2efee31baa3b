"""Retention cleanup: deletes rows and files older than the configured retention, daily.

Rows go in batches of one short statement each, so the pipeline's inserts never wait
behind one huge delete. Files go after their rows: a crash in between leaves files
without rows, which the next run finds as orphans; never rows pointing at missing files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
import time as clock
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from hsid.core.config import PathsConfig, RetentionConfig
from hsid.core.constants import SNAPSHOTS_DIR
from hsid.core.context import StageContext
from hsid.core.duty import run_duty
from hsid.core.errors import STORE_ERRORS
from hsid.core.locks import singleton_lock

log = structlog.get_logger(__name__)

DEFAULT_BATCH_SIZE = 5000
CLEANUP_DUTY = "cleanup"  # lock:cleanup: one process of a scaled-out install runs it
THUMBNAILS_DIR = "thumbnails"  # under the state dir, as the thumbnail writer lays it out
# A thumbnail file younger than this may belong to a detection whose row is not committed
# yet (the file is written first), so it is never taken for an orphan.
ORPHAN_GRACE = timedelta(hours=1)
# While waiting for cleanup_time the wall clock is read again this often, so a suspend,
# a DST change or a clock correction does not make the run late.
SCHEDULE_CHECK_SECONDS = 60.0
RETRY_AFTER_FAILURE_SECONDS = 600.0  # a failed daily run is tried again, not skipped a day

DELETE_OLD_DETECTIONS = """
DELETE FROM detections
WHERE id IN (SELECT id FROM detections WHERE detected_at < $1 LIMIT $2)
RETURNING id, thumbnail_path, file_path
"""
# The dry run's view of the same rows, page by page (id > $3) as the delete takes them.
SELECT_OLD_DETECTIONS = """
SELECT id, thumbnail_path, file_path FROM detections
WHERE detected_at < $1 AND id > $3
ORDER BY id LIMIT $2
"""
# "Still referenced" means by a row the cleanup keeps, so the dry run (where the old rows
# still exist) and the real run (where they are gone) see the same thing.
SELECT_KEPT_THUMBNAILS = """
SELECT DISTINCT thumbnail_path FROM detections
WHERE detected_at >= $1 AND thumbnail_path IS NOT NULL
"""
# Snapshot records (hsid's extension) go with the detections of their age; a copy hsid
# made of an upload (snapshots.py) goes with its record, whatever retention.delete_images.
DELETE_OLD_SNAPSHOTS = """
DELETE FROM snapshots WHERE ctid IN (SELECT ctid FROM snapshots WHERE taken_at < $1 LIMIT $2)
RETURNING image_path, file_path
"""
SELECT_OLD_SNAPSHOT_COPIES = """
SELECT image_path FROM snapshots WHERE taken_at < $1 AND image_path <> file_path
"""
SELECT_KEPT_IMAGES = """
SELECT DISTINCT file_path FROM detections WHERE detected_at >= $1 AND file_path = any($2::text[])
"""

# Tables purged by age alone: table -> (the column that dates a row, the CleanupStats
# field that counts it, whether it is kept log_days rather than days). Identifiers come
# from this fixed mapping only; the cut-off and the batch size are parameters.
AGED_TABLES = {
    "events": ("started_at", "events_deleted", False),
    "gpu_stats": ("recorded_at", "gpu_stats_deleted", False),
    "logs": ('"timestamp"', "logs_deleted", True),
    # The reference: audit logs are "subject to same retention policy as other logs".
    "audit_logs": ('"timestamp"', "logs_deleted", True),
}
DELETE_AGED = {
    table: f"WITH gone AS (DELETE FROM {table} WHERE id IN "
    f"(SELECT id FROM {table} WHERE {column} < $1 LIMIT $2) RETURNING 1) "
    "SELECT count(*) FROM gone"
    for table, (column, _, _) in AGED_TABLES.items()
}
COUNT_AGED = {
    table: f"SELECT count(*) FROM {table} WHERE {column} < $1"
    for table, (column, _, _) in AGED_TABLES.items()
}



@dataclass(slots=True)
class CleanupStats:
    """What one run deleted (or, for a dry run, would delete); the reference's fields.

    `logs_deleted` counts `logs` and `audit_logs` rows; `space_reclaimed` is the bytes
    of the files removed.
    """

    events_deleted: int = 0
    detections_deleted: int = 0
    gpu_stats_deleted: int = 0
    logs_deleted: int = 0
    thumbnails_deleted: int = 0
    images_deleted: int = 0
    space_reclaimed: int = 0
    retention_days: int = 0
    dry_run: bool = False
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        """The reference's dry-run JSON shape (timestamp ISO 8601 UTC with a Z)."""
        data = asdict(self)
        data["timestamp"] = self.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return data


@dataclass(slots=True)
class _OldDetections:
    count: int = 0
    thumbnails: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    copies: set[str] = field(default_factory=set)  # hsid's copies of uploads


async def run_cleanup(
    pool: asyncpg.Pool, retention: RetentionConfig, paths: PathsConfig, dry_run: bool,
    now: datetime | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
) -> CleanupStats:
    """Delete what is older than retention.days (detections, events, gpu_stats) and
    retention.log_days (logs, audit_logs), then the thumbnails of deleted detections,
    orphaned thumbnails, and (retention.delete_images) original images no kept detection
    refers to. `dry_run` deletes nothing and returns the same counts. Idempotent: a second
    run finds nothing; two processes running at once delete each row once."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention.days)
    log_cutoff = now - timedelta(days=retention.log_days)
    started = clock.monotonic()
    stats = CleanupStats(retention_days=retention.days, dry_run=dry_run, timestamp=now)
    old = await _purge_detections(pool, cutoff, batch_size, dry_run)
    stats.detections_deleted = old.count
    old.copies.update(await _purge_snapshots(pool, cutoff, batch_size, dry_run))
    for table, (_, counter, is_log) in AGED_TABLES.items():
        deleted = await _purge_aged(pool, table, log_cutoff if is_log else cutoff, batch_size,
                                    dry_run)
        setattr(stats, counter, getattr(stats, counter) + deleted)
    await _purge_files(pool, stats, old, retention, paths, cutoff, now)
    log.info("cleanup_finished", **{k: v for k, v in stats.to_dict().items() if k != "timestamp"},
             duration_ms=round((clock.monotonic() - started) * 1000))
    return stats


async def _purge_detections(
    pool: asyncpg.Pool, cutoff: datetime, batch_size: int, dry_run: bool
) -> _OldDetections:
    """Delete (or page through) old detections batch by batch, keeping their file paths."""
    old, last_id = _OldDetections(), 0
    while True:
        if dry_run:
            rows = await pool.fetch(SELECT_OLD_DETECTIONS, cutoff, batch_size, last_id)
        else:
            rows = await pool.fetch(DELETE_OLD_DETECTIONS, cutoff, batch_size)
        old.count += len(rows)
        old.thumbnails.update(r["thumbnail_path"] for r in rows if r["thumbnail_path"])
        old.images.update(r["file_path"] for r in rows)
        if len(rows) < batch_size:
            return old
        last_id = max(r["id"] for r in rows)
        await asyncio.sleep(0)  # let waiting pipeline work in between batches


async def _purge_snapshots(
    pool: asyncpg.Pool, cutoff: datetime, batch_size: int, dry_run: bool
) -> set[str]:
    """Delete old snapshot records batch by batch; returns their copies' paths."""
    if dry_run:
        return {r[0] for r in await pool.fetch(SELECT_OLD_SNAPSHOT_COPIES, cutoff)}
    copies: set[str] = set()
    while True:
        rows = await pool.fetch(DELETE_OLD_SNAPSHOTS, cutoff, batch_size)
        copies.update(r["image_path"] for r in rows if r["image_path"] != r["file_path"])
        if len(rows) < batch_size:
            return copies
        await asyncio.sleep(0)


async def _purge_aged(
    pool: asyncpg.Pool, table: str, cutoff: datetime, batch_size: int, dry_run: bool
) -> int:
    if dry_run:
        return int(await pool.fetchval(COUNT_AGED[table], cutoff))
    total = 0
    while True:
        deleted = int(await pool.fetchval(DELETE_AGED[table], cutoff, batch_size))
        total += deleted
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)


async def _purge_files(
    pool: asyncpg.Pool, stats: CleanupStats, old: _OldDetections, retention: RetentionConfig,
    paths: PathsConfig, cutoff: datetime, now: datetime,
) -> None:
    """Remove thumbnails (of old rows, and orphans), hsid's copies of old uploads and,
    when enabled, original images."""
    kept_thumbnails = {r[0] for r in await pool.fetch(SELECT_KEPT_THUMBNAILS, cutoff)}
    copies_root = paths.state_dir / SNAPSHOTS_DIR
    copies = old.copies | {path for path in old.images if Path(path).is_relative_to(copies_root)}
    images = (old.images - copies) if retention.delete_images else set()
    if images or copies:
        kept = {r[0] for r in await pool.fetch(SELECT_KEPT_IMAGES, cutoff,
                                               list(images | copies))}
        images, copies = images - kept, copies - kept
    stats.thumbnails_deleted, thumbnail_bytes = await asyncio.to_thread(
        _remove_thumbnails, paths.state_dir, old.thumbnails, kept_thumbnails,
        now - ORPHAN_GRACE, stats.dry_run)
    stats.images_deleted, image_bytes = await asyncio.to_thread(
        _remove_files, images, paths.camera_root, stats.dry_run)
    copies_deleted, copy_bytes = await asyncio.to_thread(
        _remove_files, copies, copies_root, stats.dry_run)
    stats.images_deleted += copies_deleted
    stats.space_reclaimed = thumbnail_bytes + image_bytes + copy_bytes


def _remove_thumbnails(
    state_dir: Path, of_old_rows: set[str], kept: set[str], orphan_before: datetime,
    dry_run: bool,
) -> tuple[int, int]:
    """Thumbnails of deleted rows plus orphans, except those a kept row refers to. Blocking.

    Paths are compared with their folders resolved, so a state dir reached through a
    symlink can never make a kept thumbnail look like an orphan.
    """
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)

    def resolve(path: str) -> str:
        folder, name = os.path.split(path)
        return os.path.join(real_folder(folder), name)

    root = state_dir / THUMBNAILS_DIR
    candidates = {resolve(p) for p in [*of_old_rows, *_orphans(root, orphan_before)]}
    result = _remove_files(candidates - {resolve(p) for p in kept}, state_dir, dry_run)
    if not dry_run:
        _prune_empty_folders(root, orphan_before)
    return result


def _inside(candidates: Iterable[str], root: Path) -> list[str]:
    """The paths that really lie under `root` (symlinks resolved), so a row pointing at
    /etc/passwd or ../../somewhere can never make the cleanup delete it."""
    real_root = Path(os.path.realpath(root))
    return [p for p in candidates if Path(os.path.realpath(p)).is_relative_to(real_root)]


def _orphans(root: Path, older_than: datetime) -> set[str]:
    """Every file under the thumbnails folder last written before `older_than`."""
    limit = older_than.timestamp()
    found: set[str] = set()
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mtime < limit:
                    found.add(path)
    return found


def _remove_files(candidates: Iterable[str], root: Path, dry_run: bool) -> tuple[int, int]:
    """(files removed, bytes) of the regular files among `candidates` that lie under
    `root`; a dry run only counts. Missing files and symlinks are skipped; a file that
    cannot be removed is logged and not counted. Blocking."""
    count = size = 0
    for path in sorted(_inside(candidates, root)):
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cleanup_file_not_removed", path=path, error=str(err))
            continue
        count, size = count + 1, size + info.st_size
    return count, size


def _prune_empty_folders(root: Path, older_than: datetime) -> None:
    """Remove the per-camera and per-day folders left empty (not `root`). A folder changed
    lately is left alone: the thumbnail writer may have just made it for its next file."""
    limit = older_than.timestamp()
    for folder, _, _ in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):  # not empty, or gone: both fine
            if folder != str(root) and os.stat(folder).st_mtime < limit:
                os.rmdir(folder)


def next_cleanup(cleanup_time: str, now: datetime) -> datetime:
    """The first `cleanup_time` ("HH:MM" on the wall clock) strictly after `now`, in the
    zone `now` is in: the site's, or naive local time.

    Wall-clock on purpose: `.timestamp()` then applies the DST offset of that day (a time
    the clocks skip runs when they jump past it).
    """
    at = time.fromisoformat(cleanup_time)
    today = datetime.combine(now.date(), at, tzinfo=now.tzinfo)
    if today > now:
        return today
    return datetime.combine(now.date() + timedelta(days=1), at, tzinfo=now.tzinfo)


class CleanupService:
    """Stage: runs the cleanup every day at retention.cleanup_time (the site's local time)
    in the one process that takes lock:cleanup; a run that fails on a store is retried."""

    def __init__(self, context: StageContext, *, zone: tzinfo | None = None) -> None:
        self._zone = zone  # the site's; None: the system's
        self._retention = context.config.retention
        self._keyspace = context.keyspace
        self._paths = context.config.paths
        self._pool = context.pool
        self._redis = context.redis
        self._stopping = context.stopping

    async def run(self) -> None:
        self._due = self._scheduled(next_cleanup(self._retention.cleanup_time,
                                                 datetime.now(self._zone)))
        await run_duty(CLEANUP_DUTY, self._run_when_due, SCHEDULE_CHECK_SECONDS, self._stopping)

    async def _run_when_due(self) -> float:
        """Run the cleanup once its wall-clock time has come; returns the seconds until the
        next look (at most SCHEDULE_CHECK_SECONDS, so a changed clock is noticed). A run
        that fails on a store is tried again RETRY_AFTER_FAILURE_SECONDS later."""
        if clock.time() >= self._due.timestamp():
            try:
                await self.run_once()
            except STORE_ERRORS as err:
                log.warning("cleanup_failed", error=str(err) or type(err).__name__,
                            retry_in_s=RETRY_AFTER_FAILURE_SECONDS)
                due = datetime.now(self._zone) + timedelta(seconds=RETRY_AFTER_FAILURE_SECONDS)
            else:
                due = next_cleanup(self._retention.cleanup_time, datetime.now(self._zone))
            self._due = self._scheduled(due)
        return min(self._due.timestamp() - clock.time(), SCHEDULE_CHECK_SECONDS)

    @staticmethod
    def _scheduled(due: datetime) -> datetime:
        log.info("cleanup_scheduled", at=due.isoformat(timespec="minutes"))
        return due

    async def run_once(self) -> CleanupStats | None:
        """One real cleanup under the lock; None when another process holds it."""
        async with singleton_lock(self._redis, self._keyspace, CLEANUP_DUTY) as held:
            if not held:
                log.info("cleanup_skipped", reason="another process holds the cleanup lock")
                return None
            return await run_cleanup(self._pool, self._retention, self._paths, dry_run=False)
