"""Tests for hsid/pipeline/watcher.py: real folders, Redis and PostgreSQL, small settle times."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.cameras.registry import camera_ids
from hsid.core.config import Config, load_config
from hsid.core.constants import DETECTION_QUEUE
from hsid.core.context import StageContext
from hsid.core.db import create_pool
from hsid.core.keyspace import Keyspace
from hsid.core.metrics import REGISTRY
from hsid.core.queues import ReliableQueue
from hsid.pipeline import watcher as watcher_module
from hsid.pipeline.watcher import Watcher
from tests.pipeline.samples import FAST_SETTLE, jpeg

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}")
WAIT_SECONDS = 5.0


async def queued(redis: aioredis.Redis, keyspace: Keyspace) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await redis.lrange(keyspace.queue(DETECTION_QUEUE), 0, -1)]


class Running:
    """A watcher running as a task, with helpers to wait on what it does."""

    def __init__(self, task: asyncio.Task[None], redis: aioredis.Redis,
                 keyspace: Keyspace) -> None:
        self.task, self.redis, self.keyspace = task, redis, keyspace

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not await check():
            if self.task.done():
                self.task.result()  # surfaces the watcher's crash
                pytest.fail(f"watcher stopped before {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def items(self, count: int) -> list[dict[str, Any]]:
        async def enough() -> bool:
            return len(await queued(self.redis, self.keyspace)) >= count

        await self.until(enough, f"{count} queued item(s)")
        return await queued(self.redis, self.keyspace)


@asynccontextmanager
async def running_watcher(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, **watcher: float
) -> AsyncIterator[Running]:
    config = config.with_overrides({"watcher": {**FAST_SETTLE, **watcher}})
    stopping = asyncio.Event()
    keyspace = Keyspace.from_config(config.redis)  # the run's prefix, as the daemon builds it
    queue = ReliableQueue(redis, DETECTION_QUEUE, "test", config.queues, keyspace=keyspace)
    stage = Watcher(StageContext(config, db, redis, keyspace, stopping=stopping), queue)
    task = asyncio.create_task(stage.run())
    try:
        yield Running(task, redis, keyspace)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)


def counter(name: str, camera: str) -> float:
    return REGISTRY.get_sample_value(f"hsid_images_{name}_total", {"camera": camera}) or 0.0


async def status(db: asyncpg.Pool, camera_id: str) -> str | None:
    return await db.fetchval("SELECT status FROM cameras WHERE id = $1", camera_id)


# --- the stage, on real folders and stores -----------------------------------------------------


async def test_file_written_in_pieces_is_queued_once_after_the_last_piece(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    data = jpeg(1, size=256)
    path = gate / "snap.jpg"
    async with running_watcher(config, db, redis) as watcher:
        with path.open("wb") as upload:
            for piece in (data[: len(data) // 3], data[len(data) // 3 : -100]):
                upload.write(piece)
                upload.flush()
                await asyncio.sleep(0.5)  # longer than either settle time
                assert await queued(redis, keyspace) == []
            upload.write(data[-100:])
        items = await watcher.items(1)
        await asyncio.sleep(0.5)

    assert await queued(redis, keyspace) == items
    assert items[0]["camera_id"] == "gate"
    assert items[0]["file_path"] == str(path)
    assert TIMESTAMP.fullmatch(items[0]["timestamp"])
    # The reference's keys first, then what hsid knows of the upload (snapshots.Upload).
    assert list(items[0]) == ["camera_id", "file_path", "timestamp", "sha256", "image_path",
                              "size", "mtime_ns"]
    assert items[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert (items[0]["image_path"], items[0]["size"]) == (str(path), len(data))


async def test_complete_jpeg_is_taken_after_the_short_settle(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis, settle_seconds=10.0) as watcher:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        (gate / "snap.jpg").write_bytes(jpeg(2))
        await watcher.items(1)
        waited = time.monotonic() - started

    assert waited < 1.0  # the 10 s settle did not apply: the end-of-image marker was there


async def test_new_camera_folder_registers_a_camera(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path
) -> None:
    async with running_watcher(config, db, redis) as watcher:
        folder = camera_root / "Front Door-2"
        folder.mkdir()

        async def registered() -> bool:
            return await status(db, "front_door_2") is not None

        await watcher.until(registered, "the camera row")
        (folder / "snap.jpg").write_bytes(jpeg(3))
        items = await watcher.items(1)

    row = await db.fetchrow("SELECT * FROM cameras WHERE id = 'front_door_2'")
    assert (row["name"], row["folder_path"]) == ("Front Door-2", str(folder))
    assert row["last_seen_at"] is not None
    assert items[0]["camera_id"] == "front_door_2"


async def test_symlinked_image_is_refused(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path, tmp_path: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    target = tmp_path / "elsewhere.jpg"
    target.write_bytes(jpeg(4))
    before = counter("rejected", "gate")
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            (gate / "link.jpg").symlink_to(target)
            (gate / "real.jpg").write_bytes(jpeg(5))
            items = await watcher.items(1)
            await asyncio.sleep(0.3)

    assert [item["file_path"] for item in await queued(redis, keyspace)] == [str(gate / "real.jpg")]
    assert items[0]["file_path"] == str(gate / "real.jpg")
    rejected = [entry for entry in logs if entry["event"] == "image_rejected"]
    assert [(e["path"], e["reason"], e["log_level"]) for e in rejected] == [
        (str(gate / "link.jpg"), "symlink", "warning")
    ]
    assert counter("rejected", "gate") == before + 1


async def test_symlinked_folder_pointing_outside_is_refused(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path, tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg(6))
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            (camera_root / "evil").symlink_to(outside)

            async def refused() -> bool:
                return any(entry["event"] == "image_rejected" for entry in logs)

            await watcher.until(refused, "the refusal")

    assert await queued(redis, keyspace) == []
    assert await status(db, "evil") is None
    events = {(entry["event"], entry.get("reason")) for entry in logs}
    assert ("camera_folder_refused", "symlink") in events
    assert ("image_rejected", "outside_camera_root") in events


async def test_non_image_is_ignored(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis) as watcher:
        (gate / "notes.txt").write_bytes(b"not a picture")
        (gate / "clip.mp4").write_bytes(jpeg(7))
        (gate / "snap.JPG").write_bytes(jpeg(8))
        items = await watcher.items(1)
        await asyncio.sleep(0.4)

    assert [item["file_path"] for item in await queued(redis, keyspace)] == [str(gate / "snap.JPG")]
    assert items[0]["camera_id"] == "gate"


async def test_temporary_names_are_ignored_until_renamed(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis) as watcher:
        for seed, name in enumerate((".snap.jpg", "a.jpg.part", "b.jpg.tmp", "c.jpg.filepart")):
            (gate / name).write_bytes(jpeg(10 + seed))
        await asyncio.sleep(0.6)  # well past both settle times
        assert await queued(redis, keyspace) == []

        (gate / "a.jpg.part").rename(gate / "a.jpg")
        items = await watcher.items(1)
        await asyncio.sleep(0.3)

    assert await queued(redis, keyspace) == items
    assert items[0]["file_path"] == str(gate / "a.jpg")


async def test_startup_scan_takes_files_that_arrived_while_down(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    for seed, name in enumerate(("new.jpg", "done.jpg", "ancient.jpg")):
        (gate / name).write_bytes(jpeg(20 + seed))
    week_ago = time.time() - 7 * 86400
    os.utime(gate / "ancient.jpg", (week_ago, week_ago))
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ('gate', 'gate', $1)",
                     str(gate))
    done = (gate / "done.jpg").stat()  # dealt with before the restart, detections or not
    await db.execute(
        "INSERT INTO snapshots (sha256, file_path, camera_id, image_path, size, mtime_ns, outcome)"
        " VALUES ('x', $1, 'gate', $1, $2, $3, 'processed')",
        str(gate / "done.jpg"), done.st_size, done.st_mtime_ns)

    async with running_watcher(config, db, redis) as watcher:
        items = await watcher.items(1)
        await asyncio.sleep(0.4)

    assert await queued(redis, keyspace) == items
    assert items[0]["file_path"] == str(gate / "new.jpg")


async def test_same_content_under_two_names_is_queued_once(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    data = jpeg(30)
    before = counter("deduplicated", "gate")
    async with running_watcher(config, db, redis) as watcher:
        (gate / "one.jpg").write_bytes(data)
        (gate / "two.jpg").write_bytes(data)
        await watcher.items(1)
        await asyncio.sleep(0.5)

    assert len(await queued(redis, keyspace)) == 1
    assert counter("deduplicated", "gate") == before + 1


async def test_stalled_uploads_are_taken_as_they_are_with_a_warning(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    # Cut short, or empty: once still for stall_seconds (1 s here) each is queued, for the
    # detect worker to decode as far as it goes or to dead-letter with the reason.
    gate = camera_root / "gate"
    gate.mkdir()
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            (gate / "cut.jpg").write_bytes(jpeg(31)[:-50])
            (gate / "empty.jpg").write_bytes(b"")
            (gate / "empty-too.jpg").write_bytes(b"")  # the same (no) content: each its own
            items = await watcher.items(3)

    assert sorted(Path(item["file_path"]).name for item in items) == [
        "cut.jpg", "empty-too.jpg", "empty.jpg"]
    stalled = [entry for entry in logs if entry["event"] == "image_stalled"]
    assert {(Path(e["path"]).name, e["log_level"]) for e in stalled} == {
        ("cut.jpg", "warning"), ("empty.jpg", "warning"), ("empty-too.jpg", "warning")}


@pytest.mark.parametrize("tail", [b"\0" * 2048, b"junk after the end" * 50],
                         ids=["zero-padding", "junk"])
async def test_jpeg_with_bytes_after_its_end_is_taken_without_waiting_to_stall(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path, tail: bytes,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis, stall_seconds=60.0) as watcher:
        (gate / "esp32.jpg").write_bytes(jpeg(32) + tail)
        [item] = await watcher.items(1)
    assert item["size"] == len(jpeg(32)) + len(tail)


async def test_folder_removal_sets_error_and_next_image_online(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    (gate / "old.jpg").write_bytes(jpeg(40))
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            await watcher.items(1)
            shutil.rmtree(gate)

            async def errored() -> bool:
                return await status(db, "gate") == "error"

            await watcher.until(errored, "status error")
            gate.mkdir()
            (gate / "new.jpg").write_bytes(jpeg(41))
            await watcher.items(2)

    assert await status(db, "gate") == "online"
    changes = [
        (entry["old_status"], entry["status"])
        for entry in logs if entry["event"] == "camera_status_changed"
    ]
    assert changes == [("online", "error"), ("error", "online")]


async def test_quiet_camera_goes_offline_and_a_manual_status_stands(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis, offline_after_minutes=0.005) as watcher:

        async def offline() -> bool:
            return await status(db, "gate") == "offline"

        await watcher.until(offline, "status offline")
        await db.execute("UPDATE cameras SET status = 'online' WHERE id = 'gate'")
        await asyncio.sleep(0.5)  # the watcher's view has not changed: the manual status stands
        assert await status(db, "gate") == "online"

        await db.execute("UPDATE cameras SET status = 'offline' WHERE id = 'gate'")
        (gate / "snap.jpg").write_bytes(jpeg(50))
        await watcher.items(1)
        assert await status(db, "gate") == "online"


async def test_folder_moved_in_with_images_is_registered_and_scanned(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path, tmp_path: Path
) -> None:
    staged = tmp_path / "Back Yard"
    (staged / "2025-12-23").mkdir(parents=True)
    (staged / "2025-12-23" / "snap.jpg").write_bytes(jpeg(60))
    async with running_watcher(config, db, redis) as watcher:
        await asyncio.sleep(0.2)
        staged.rename(camera_root / "Back Yard")  # no event for the files inside: only a scan
        items = await watcher.items(1)

    assert (items[0]["camera_id"], items[0]["file_path"]) == (
        "back_yard", str(camera_root / "Back Yard" / "2025-12-23" / "snap.jpg"))
    assert await status(db, "back_yard") == "online"


async def test_watcher_crash_never_sets_the_daemon_stop_flag(
    config: Config, database_url: str, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
) -> None:
    # watchfiles sets its stop_event when the watch is cancelled; given the daemon's, a
    # crash here once ended hsid with status 0 and nothing restarted it.
    (camera_root / "gate").mkdir()
    broken = await create_pool(config.database, database_url)
    await broken.close()  # every query now raises, as with the database gone
    stopping = asyncio.Event()
    queue = ReliableQueue(redis, DETECTION_QUEUE, "test", config.queues, keyspace=keyspace)
    stage = Watcher(StageContext(config, broken, redis, keyspace, stopping=stopping), queue)

    with pytest.raises(ExceptionGroup) as crash:
        await asyncio.wait_for(stage.run(), 5)

    assert crash.group_contains(asyncpg.InterfaceError)
    assert not stopping.is_set()


async def test_images_are_queued_again_when_redis_comes_back_empty(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watcher_module, "RECONCILE_CHECK_SECONDS", 0.2)
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis) as watcher:
        (gate / "accepted.jpg").write_bytes(jpeg(41))
        [item] = await watcher.items(1)
        with capture_logs() as logs:
            await redis.flushdb()  # a restart of a Redis that keeps nothing on disk
            [again] = await watcher.items(1)

    assert again["file_path"] == item["file_path"] == str(gate / "accepted.jpg")
    assert any(entry["event"] == "redis_state_lost" for entry in logs)


# --- cameras as people lay them out (issue 12) ---------------------------------------------


def ignored(reason: str) -> float:
    return REGISTRY.get_sample_value("hsid_files_ignored_total", {"reason": reason}) or 0.0


async def camera_names(db: asyncpg.Pool) -> dict[str, str]:
    return {row["id"]: row["name"] for row in await db.fetch("SELECT id, name FROM cameras")}


async def test_folder_names_in_any_script_give_one_camera_each_and_keep_their_ids(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
) -> None:
    names = ["前门", "车库1", "门口1", "Indkørsel", "Front Door", "front-door"]
    for name in names:
        (camera_root / name).mkdir()
    async with running_watcher(config, db, redis) as watcher:
        for seed, name in enumerate(names):
            (camera_root / name / "snap.jpg").write_bytes(jpeg(100 + seed))
        items = await watcher.items(len(names))

    by_folder = {Path(item["file_path"]).parent.name: item["camera_id"] for item in items}
    assert by_folder == {
        "前门": camera_ids("前门")[0],  # cam-<hash>: no ASCII to keep
        "车库1": "1", "门口1": camera_ids("门口1")[1],  # 1-<hash>: "1" was taken
        "Indkørsel": "indkorsel",
        "Front Door": "front_door", "front-door": camera_ids("front-door")[1],
    }
    assert await camera_names(db) == {camera: name for name, camera in by_folder.items()}

    # After a restart each folder keeps its camera: the id registered for it wins.
    await redis.delete(keyspace.queue(DETECTION_QUEUE))
    async with running_watcher(config, db, redis) as watcher:
        for seed, name in enumerate(reversed(names)):
            (camera_root / name / "again.jpg").write_bytes(jpeg(120 + seed))
        again = await watcher.items(len(names))
    assert {Path(item["file_path"]).parent.name: item["camera_id"] for item in again} == by_folder
    assert await db.fetchval("SELECT count(*) FROM cameras") == len(names)


async def test_camera_pattern_names_cameras_in_shared_folders_and_nvr_trees(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path,
) -> None:
    config = config.with_overrides(
        {"watcher": {"camera_pattern": r"(?P<camera>Camera \d+|cam\d+)"}})
    nvr, uploads = camera_root / "NVR" / "Camera 01" / "2025-12-23", camera_root / "uploads"
    nvr.mkdir(parents=True)
    uploads.mkdir()
    async with running_watcher(config, db, redis) as watcher:
        (nvr / "120000.jpg").write_bytes(jpeg(130))
        (uploads / "cam1_0001.jpg").write_bytes(jpeg(131))
        (uploads / "cam2_0001.jpg").write_bytes(jpeg(132))
        (uploads / "porch.jpg").write_bytes(jpeg(133))  # no pattern match: its folder's
        items = await watcher.items(4)

    assert {Path(item["file_path"]).name: item["camera_id"] for item in items} == {
        "120000.jpg": "camera_01", "cam1_0001.jpg": "cam1", "cam2_0001.jpg": "cam2",
        "porch.jpg": "uploads"}
    # NVR holds only pattern cameras: it is no camera of its own.
    assert await camera_names(db) == {
        "camera_01": "Camera 01", "cam1": "cam1", "cam2": "cam2", "uploads": "uploads"}
    folders = dict(await db.fetch("SELECT id, folder_path FROM cameras"))
    assert folders["camera_01"] == str(camera_root / "NVR" / "Camera 01")
    assert folders["cam1"] == str(camera_root)  # named by its files, wherever they are


async def test_files_in_the_root_go_to_the_root_camera_with_one_warning(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path,
) -> None:
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            (camera_root / "first.jpg").write_bytes(jpeg(140))
            await watcher.items(1)
            (camera_root / "second.jpg").write_bytes(jpeg(141))
            items = await watcher.items(2)

    assert [item["camera_id"] for item in items] == ["unsorted", "unsorted"]
    assert await camera_names(db) == {"unsorted": "unsorted"}
    warnings = [entry for entry in logs if entry["event"] == "image_in_camera_root"]
    assert [(entry["path"], entry["log_level"]) for entry in warnings] == [
        (str(camera_root / "first.jpg"), "warning")]


async def test_every_file_not_taken_is_counted_by_reason(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path, tmp_path: Path,
) -> None:
    gate = camera_root / "gate"
    (gate / ".staging").mkdir(parents=True)  # where an FTP server stages its uploads
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg(150))
    reasons = ("not_an_image", "temporary_name", "hidden_folder", "symlink")
    before = {reason: ignored(reason) for reason in reasons}
    async with running_watcher(config, db, redis) as watcher:
        await asyncio.sleep(0.3)  # watching: the start-up scan does not enter hidden folders
        (gate / "notes.txt").write_bytes(b"not a picture")
        (gate / "a.jpg.part").write_bytes(jpeg(151))
        (gate / ".b.jpg").write_bytes(jpeg(152))
        (gate / ".staging" / "c.jpg").write_bytes(jpeg(153))
        (gate / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")
        expected = {"not_an_image": 1, "temporary_name": 2, "hidden_folder": 1, "symlink": 1}

        async def counted() -> bool:
            return all(ignored(reason) >= before[reason] + expected[reason]
                       for reason in reasons)

        await watcher.until(counted, "the ignored files counted")
        await asyncio.sleep(0.5)  # later writes and settle checks count nothing more

    assert {reason: ignored(reason) - before[reason] for reason in reasons} == expected


async def test_temporary_upload_name_is_taken_once_after_its_rename(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running_watcher(config, db, redis) as watcher:
        (gate / "x_tmp.jpg").write_bytes(jpeg(160))  # the "FTP rename" style of upload
        await asyncio.sleep(0.6)  # well past both settle times
        assert await queued(redis, keyspace) == []
        (gate / "x_tmp.jpg").rename(gate / "x.jpg")
        items = await watcher.items(1)
        await asyncio.sleep(0.5)

    assert await queued(redis, keyspace) == items
    assert items[0]["file_path"] == str(gate / "x.jpg")


def polling_modes(logs: list[dict[str, Any]]) -> list[tuple[bool, str]]:
    return [(entry["polling"], entry["reason"]) for entry in logs
            if entry["event"] == "watcher_started"]


@pytest.mark.parametrize("how", ["config", "WATCHFILES_FORCE_POLLING"])
async def test_polling_can_be_forced(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, camera_root: Path, how: str,
) -> None:
    if how == "config":
        config = config.with_overrides({"watcher": {"polling": True}})
    else:  # read from the environment as the daemon reads it
        config = load_config(None, {
            "DATABASE_URL": config.database.url, "REDIS_URL": config.redis.url,
            "HSID_REDIS__PREFIX": config.redis.prefix,
            "HSID_PATHS__CAMERA_ROOT": str(camera_root),
            "HSID_PATHS__STATE_DIR": str(config.paths.state_dir),
            "WATCHFILES_FORCE_POLLING": "1",
        })
    gate = camera_root / "gate"
    gate.mkdir()
    with capture_logs() as logs:
        async with running_watcher(config, db, redis, poll_interval_seconds=0.1) as watcher:
            await asyncio.sleep(0.3)
            (gate / "snap.jpg").write_bytes(jpeg(170))
            items = await watcher.items(1)

    assert polling_modes(logs) == [(True, "watcher.polling = true")]
    assert items[0]["file_path"] == str(gate / "snap.jpg")


async def overlay_upload_seen(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    overlay_root: Path, **watcher: Any,
) -> bool:
    """Run the watcher on an overlay camera root and write a snapshot into the overlay's
    upper layer directly, as a container sharing the upload folder would; whether it came."""
    config = config.with_overrides({"paths": {"camera_root": str(overlay_root)}})
    (overlay_root / "gate").mkdir()
    upper = overlay_root.parent / "upper"
    async with running_watcher(config, db, redis, poll_interval_seconds=0.1, **watcher):
        await asyncio.sleep(0.3)
        (upper / "gate" / "snap.jpg").write_bytes(jpeg(180))
        for _ in range(40):  # 2 s: twenty polls, and far beyond inotify's reaction
            if await queued(redis, keyspace):
                break
            await asyncio.sleep(0.05)
    return bool(await queued(redis, keyspace))


async def test_auto_polls_a_camera_root_on_an_overlay(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    overlay_root: Path,
) -> None:
    with capture_logs() as logs:
        seen = await overlay_upload_seen(config, db, redis, keyspace, overlay_root)

    assert seen
    [started] = [entry for entry in logs if entry["event"] == "watcher_started"]
    assert (started["polling"], started["file_system"]) == (True, "overlayfs")
    assert started["poll_interval_seconds"] == 0.1


async def test_inotify_alone_misses_a_write_to_an_overlay_layer(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    overlay_root: Path,
) -> None:
    # Why "auto" polls there: with polling off, the same upload goes unseen.
    with capture_logs() as logs:
        seen = await overlay_upload_seen(config, db, redis, keyspace, overlay_root,
                                         polling=False)

    assert not seen
    assert polling_modes(logs) == [(False, "watcher.polling = false")]


async def test_an_upload_removed_before_it_was_complete_is_said_and_counted(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    before = ignored("gone")
    with capture_logs() as logs:
        async with running_watcher(config, db, redis, stall_seconds=60.0) as watcher:
            aborted = gate / "aborted.jpg"
            aborted.write_bytes(jpeg(170)[:-80])  # the upload stops short ...
            await asyncio.sleep(0.4)
            aborted.unlink()  # ... and the FTP server removes what it had

            async def said() -> bool:
                return any(entry["event"] == "image_gone" for entry in logs)

            await watcher.until(said, "the removal said")

    assert await queued(redis, keyspace) == []
    [gone] = [entry for entry in logs if entry["event"] == "image_gone"]
    assert gone["path"] == str(gate / "aborted.jpg")
    assert ignored("gone") == before + 1
