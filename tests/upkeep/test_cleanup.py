"""Retention cleanup against the real database and real files: rows, thumbnails, images."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from hsid.api.server import build_app
from hsid.commands.cleanup import cleanup_command
from hsid.core.config import Config, PathsConfig, RetentionConfig
from hsid.core.constants import SNAPSHOTS_DIR
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.runtime import Runtime
from hsid.upkeep.cleanup import (
    CleanupService,
    next_cleanup,
    run_cleanup,
)

CAMERA = "front_door"
RETENTION = RetentionConfig(days=30, log_days=7)
REPORTED = ("events_deleted", "detections_deleted", "gpu_stats_deleted", "logs_deleted",
            "thumbnails_deleted", "images_deleted", "space_reclaimed")

INSERT_CAMERA = "INSERT INTO cameras (id, name, folder_path) VALUES ($1, $1, $2)"
INSERT_DETECTION = """
INSERT INTO detections (camera_id, file_path, detected_at, object_type, confidence, thumbnail_path)
VALUES ($1, $2, $3, 'person', 0.9, $4) RETURNING id
"""
INSERT_EVENT = """
INSERT INTO events (batch_id, camera_id, started_at) VALUES (gen_random_uuid()::text, $1, $2)
"""
INSERT_GPU_STAT = "INSERT INTO gpu_stats (recorded_at, gpu_name) VALUES ($1, 'test')"
INSERT_LOG = """
INSERT INTO logs ("timestamp", level, component, message) VALUES ($1, 'INFO', 'test', 'm')
"""
INSERT_AUDIT = """
INSERT INTO audit_logs ("timestamp", action, resource_type, actor) VALUES ($1, 'a', 'r', 'me')
"""


@dataclass
class Seeded:
    """What `seeded` put where, by what the cleanup should do with it."""

    now: datetime
    old_thumbnails: list[Path]  # thumbnails of detections past retention
    kept_thumbnails: list[Path]  # thumbnails of recent detections
    orphan: Path  # an old thumbnail file no row refers to
    fresh_orphan: Path  # an unreferenced thumbnail written just now (row may be on its way)
    outside: Path  # an old row's "thumbnail" outside the state dir
    image_old_only: Path  # referenced by old detections only
    image_shared: Path  # referenced by an old and a recent detection
    image_recent: Path


def _file(path: Path, size: int, age: timedelta | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if age is not None:
        stamp = (datetime.now(UTC) - age).timestamp()
        os.utime(path, (stamp, stamp))
    return path


def _paths(camera_root: Path, state_dir: Path) -> PathsConfig:
    return PathsConfig(camera_root=camera_root, state_dir=state_dir)


async def _detection(db: asyncpg.Pool, image: Path, at: datetime, thumb: Path | None) -> int:
    return await db.fetchval(INSERT_DETECTION, CAMERA, str(image), at,
                             None if thumb is None else str(thumb))


@pytest.fixture
async def seeded(db: asyncpg.Pool, camera_root: Path, state_dir: Path,
                 tmp_path: Path) -> Seeded:
    """Rows either side of both cut-offs, with their thumbnail and image files."""
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=1)
    await db.execute(INSERT_CAMERA, CAMERA, str(camera_root / CAMERA))
    thumbs = state_dir / "thumbnails" / CAMERA
    images = {name: _file(camera_root / CAMERA / f"{name}.jpg", 1000)
              for name in ("old_only", "shared", "recent")}
    old_thumbnails = [_file(thumbs / "old" / f"{i}.jpg", 100, timedelta(days=40)) for i in range(3)]
    kept_thumbnails = [_file(thumbs / "new" / f"{i}.jpg", 100, timedelta(days=1)) for i in range(2)]
    outside = _file(tmp_path / "elsewhere" / "thumb.jpg", 100)
    await _detection(db, images["old_only"], old, old_thumbnails[0])
    await _detection(db, images["old_only"], old, old_thumbnails[1])
    await _detection(db, images["shared"], old, old_thumbnails[2])
    await _detection(db, images["old_only"], old, outside)
    await _detection(db, images["shared"], recent, kept_thumbnails[0])
    await _detection(db, images["recent"], recent, kept_thumbnails[1])
    await _detection(db, images["recent"], recent, None)
    for at in (old, old, recent):
        await db.execute(INSERT_EVENT, CAMERA, at)
    for days in (40, 20, 1):  # the 20-day sample is kept: gpu_stats follow `days`
        await db.execute(INSERT_GPU_STAT, now - timedelta(days=days))
    for days in (20, 8, 3):  # logs follow `log_days`
        await db.execute(INSERT_LOG, now - timedelta(days=days))
    for days in (10, 1):
        await db.execute(INSERT_AUDIT, now - timedelta(days=days))
    return Seeded(
        now=now, old_thumbnails=old_thumbnails, kept_thumbnails=kept_thumbnails,
        orphan=_file(thumbs / "lost" / "orphan.jpg", 50, timedelta(hours=3)),
        fresh_orphan=_file(thumbs / "new" / "in-flight.jpg", 50),
        outside=outside, image_old_only=images["old_only"], image_shared=images["shared"],
        image_recent=images["recent"],
    )


async def _row_counts(db: asyncpg.Pool) -> dict[str, int]:
    tables = ("detections", "events", "gpu_stats", "logs", "audit_logs")
    return {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


async def test_dry_run_counts_equal_the_real_run_and_delete_nothing(
    db: asyncpg.Pool, seeded: Seeded, camera_root: Path, state_dir: Path
) -> None:
    paths = _paths(camera_root, state_dir)
    before = await _row_counts(db)

    preview = await run_cleanup(db, RETENTION, paths, dry_run=True, now=seeded.now)

    assert await _row_counts(db) == before
    assert all(p.exists() for p in [*seeded.old_thumbnails, seeded.orphan])
    real = await run_cleanup(db, RETENTION, paths, dry_run=False, now=seeded.now)
    assert {k: getattr(preview, k) for k in REPORTED} == {k: getattr(real, k) for k in REPORTED}
    assert (preview.dry_run, real.dry_run) == (True, False)
    assert real.detections_deleted == 4
    assert real.events_deleted == 2
    assert real.gpu_stats_deleted == 1
    assert real.logs_deleted == 3  # logs 20 and 8 days old, audit log 10 days old
    assert real.thumbnails_deleted == 4  # three of old rows, one orphan
    assert real.images_deleted == 0  # delete_images is off by default
    assert real.space_reclaimed == 3 * 100 + 50


async def test_files_go_only_with_their_rows(
    db: asyncpg.Pool, seeded: Seeded, camera_root: Path, state_dir: Path
) -> None:
    empty_day = state_dir / "thumbnails" / CAMERA / "2020-01-01"
    empty_day.mkdir()
    stamp = (seeded.now - timedelta(days=2)).timestamp()
    os.utime(empty_day, (stamp, stamp))

    await run_cleanup(db, RETENTION, _paths(camera_root, state_dir), dry_run=False,
                      now=seeded.now)

    assert not any(p.exists() for p in [*seeded.old_thumbnails, seeded.orphan])
    assert all(p.exists() for p in seeded.kept_thumbnails)
    assert seeded.fresh_orphan.exists(), "a thumbnail younger than the grace period stays"
    assert seeded.outside.exists(), "nothing outside the state dir is ever deleted"
    assert all(p.exists() for p in (seeded.image_old_only, seeded.image_shared))
    assert not empty_day.exists(), "an empty folder of an earlier day goes"
    assert await _row_counts(db) == {
        "detections": 3, "events": 1, "gpu_stats": 2, "logs": 1, "audit_logs": 1}


async def test_delete_images_removes_only_images_no_kept_detection_uses(
    db: asyncpg.Pool, seeded: Seeded, camera_root: Path, state_dir: Path
) -> None:
    retention = RetentionConfig(days=30, log_days=7, delete_images=True)
    paths = _paths(camera_root, state_dir)

    preview = await run_cleanup(db, retention, paths, dry_run=True, now=seeded.now)
    real = await run_cleanup(db, retention, paths, dry_run=False, now=seeded.now)

    assert preview.images_deleted == real.images_deleted == 1
    assert preview.space_reclaimed == real.space_reclaimed == 3 * 100 + 50 + 1000
    assert not seeded.image_old_only.exists()
    assert seeded.image_shared.exists() and seeded.image_recent.exists()


async def test_images_outside_the_camera_root_are_never_deleted(
    db: asyncpg.Pool, camera_root: Path, state_dir: Path, tmp_path: Path
) -> None:
    await db.execute(INSERT_CAMERA, CAMERA, str(camera_root / CAMERA))
    stray = _file(tmp_path / "not-a-camera" / "image.jpg", 10)
    await _detection(db, stray, datetime.now(UTC) - timedelta(days=60), None)
    retention = RetentionConfig(days=30, delete_images=True)

    stats = await run_cleanup(db, retention, _paths(camera_root, state_dir), dry_run=False)

    assert (stats.detections_deleted, stats.images_deleted) == (1, 0)
    assert stray.exists()


async def test_snapshot_records_and_hsids_copies_go_with_their_age(
    db: asyncpg.Pool, camera_root: Path, state_dir: Path,
) -> None:
    # Copies are hsid's own: removed with their records even with delete_images off.
    await db.execute(INSERT_CAMERA, CAMERA, str(camera_root / CAMERA))
    now = datetime.now(UTC)
    copies = state_dir / SNAPSHOTS_DIR / CAMERA / "2025-01-01"
    original = str(camera_root / CAMERA / "snapshot.jpg")
    rows = {"old-copy": (40, _file(copies / "a.jpg", 70)), "recent-copy": (1, _file(
        copies / "b.jpg", 80)), "old-in-place": (40, Path(original))}
    for sha, (days, image) in rows.items():
        await db.execute(
            "INSERT INTO snapshots (sha256, file_path, camera_id, image_path, size, mtime_ns,"
            " outcome, taken_at) VALUES ($1, $2, $3, $4, 1, 1, 'processed', $5)",
            sha, original, CAMERA, str(image), now - timedelta(days=days))
    await _detection(db, rows["old-copy"][1], now - timedelta(days=40), None)

    stats = await run_cleanup(db, RETENTION, _paths(camera_root, state_dir), dry_run=False)

    assert await db.fetchval("SELECT array_agg(sha256) FROM snapshots") == ["recent-copy"]
    assert (stats.images_deleted, stats.space_reclaimed) == (1, 70)
    assert not rows["old-copy"][1].exists() and rows["recent-copy"][1].exists()


async def test_batches_delete_more_rows_than_one_batch(
    db: asyncpg.Pool, camera_root: Path, state_dir: Path
) -> None:
    await db.execute(INSERT_CAMERA, CAMERA, str(camera_root / CAMERA))
    old = datetime.now(UTC) - timedelta(days=31)
    thumbs = [_file(state_dir / "thumbnails" / CAMERA / f"{i}.jpg", 10, timedelta(days=31))
              for i in range(20)]
    for i, thumb in enumerate(thumbs):
        await _detection(db, camera_root / CAMERA / f"{i}.jpg", old, thumb)
        await db.execute(INSERT_GPU_STAT, old)
    paths = _paths(camera_root, state_dir)

    preview = await run_cleanup(db, RETENTION, paths, dry_run=True, batch_size=7)
    real = await run_cleanup(db, RETENTION, paths, dry_run=False, batch_size=7)

    for stats in (preview, real):
        assert (stats.detections_deleted, stats.gpu_stats_deleted) == (20, 20)
        assert stats.thumbnails_deleted == 20
    assert await db.fetchval("SELECT count(*) FROM detections") == 0
    assert not any(t.exists() for t in thumbs)


async def test_second_run_finds_nothing_and_logs_one_summary_line(
    db: asyncpg.Pool, seeded: Seeded, camera_root: Path, state_dir: Path
) -> None:
    paths = _paths(camera_root, state_dir)
    await run_cleanup(db, RETENTION, paths, dry_run=False, now=seeded.now)

    with capture_logs() as logs:
        again = await run_cleanup(db, RETENTION, paths, dry_run=False, now=seeded.now)

    assert all(getattr(again, k) == 0 for k in REPORTED)
    finished = [e for e in logs if e["event"] == "cleanup_finished"]
    assert len(finished) == 1
    assert finished[0]["detections_deleted"] == 0 and "duration_ms" in finished[0]


def test_stats_serialise_to_the_reference_shape() -> None:
    from hsid.upkeep.cleanup import CleanupStats

    stats = CleanupStats(events_deleted=15, retention_days=30, dry_run=True,
                         timestamp=datetime(2025, 12, 27, 10, 30, tzinfo=UTC))

    assert stats.to_dict() == {
        "events_deleted": 15, "detections_deleted": 0, "gpu_stats_deleted": 0,
        "logs_deleted": 0, "thumbnails_deleted": 0, "images_deleted": 0,
        "space_reclaimed": 0, "retention_days": 30, "dry_run": True,
        "timestamp": "2025-12-27T10:30:00Z",
    }


def test_next_cleanup_is_today_until_the_time_passes_then_tomorrow() -> None:
    assert next_cleanup("03:00", datetime(2025, 6, 1, 2, 59)) == datetime(2025, 6, 1, 3, 0)
    assert next_cleanup("03:00", datetime(2025, 6, 1, 3, 0)) == datetime(2025, 6, 2, 3, 0)
    assert next_cleanup("23:30", datetime(2025, 12, 31, 23, 45)) == datetime(2026, 1, 1, 23, 30)


def test_next_cleanup_is_at_the_sites_local_time() -> None:
    la = ZoneInfo("America/Los_Angeles")
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).astimezone(la)  # 04:00 in the house
    assert next_cleanup("03:00", now).timestamp() == datetime(
        2026, 11, 25, 11, 0, tzinfo=UTC).timestamp()  # 03:00 tomorrow there, not 03:00 UTC
    berlin = ZoneInfo("Europe/Berlin")  # 29 March 2026: no 02:30 that night
    skipped = next_cleanup("02:30", datetime(2026, 3, 29, 1, 0, tzinfo=berlin))
    assert skipped.timestamp() == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()


async def test_service_runs_only_in_the_process_holding_the_lock(
    db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    seeded: Seeded, camera_root: Path, state_dir: Path
) -> None:
    service = CleanupService(StageContext(
        Config(retention=RETENTION, paths=_paths(camera_root, state_dir)), db, redis, keyspace))
    await redis.set(keyspace.lock("cleanup"), "another-process", ex=30)

    assert await service.run_once() is None
    assert await db.fetchval("SELECT count(*) FROM detections") == 7

    await redis.delete(keyspace.lock("cleanup"))
    stats = await service.run_once()
    assert stats is not None and stats.detections_deleted == 4
    assert await redis.exists(keyspace.lock("cleanup")) == 0, "the lock is released afterwards"


async def test_cleanup_command_prints_the_statistics(
    db: asyncpg.Pool, seeded: Seeded, config: Config
) -> None:
    out = io.StringIO()

    assert await cleanup_command(config, dry_run=True, out=out) == 0

    printed = json.loads(out.getvalue())
    assert printed["dry_run"] is True and printed["detections_deleted"] == 4
    assert await db.fetchval("SELECT count(*) FROM detections") == 7


@pytest.fixture
async def cleanup_client(db: asyncpg.Pool, redis: aioredis.Redis,
                         config: Config) -> AsyncIterator[TestClient]:
    app = build_app(Runtime(config=config, stages=frozenset({"api"}), pool=db, redis=redis))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_get_previews_and_post_cleans(cleanup_client: TestClient, db: asyncpg.Pool,
                                            seeded: Seeded) -> None:
    preview = await cleanup_client.get("/api/system/cleanup", params={"dry_run": "true"})
    assert preview.status == 200
    body = await preview.json()
    assert list(body) == [*REPORTED, "retention_days", "dry_run", "timestamp"]
    assert body["dry_run"] is True and body["detections_deleted"] == 4
    assert await db.fetchval("SELECT count(*) FROM detections") == 7

    refused = await cleanup_client.get("/api/system/cleanup", params={"dry_run": "false"})
    assert refused.status == 400

    ran = await cleanup_client.post("/api/system/cleanup")
    assert ran.status == 200
    assert (await ran.json())["detections_deleted"] == 4
    assert await db.fetchval("SELECT count(*) FROM detections") == 3


async def test_post_while_another_cleanup_runs_is_a_conflict(
    cleanup_client: TestClient, redis: aioredis.Redis, keyspace: Keyspace, db: asyncpg.Pool
) -> None:
    await redis.set(keyspace.lock("cleanup"), "another-process", ex=30)

    response = await cleanup_client.post("/api/system/cleanup")

    assert response.status == 409
    assert (await response.json())["error"]["code"] == "conflict"
