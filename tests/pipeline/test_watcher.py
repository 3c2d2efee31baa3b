"""Tests for hsid/pipeline/watcher.py: real folders, Redis and PostgreSQL, small settle times."""

from __future__ import annotations

import asyncio
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

from hsid.config import Config
from hsid.constants import DETECTION_QUEUE
from hsid.db import create_pool
from hsid.keyspace import Keyspace
from hsid.metrics import REGISTRY
from hsid.pipeline import watcher as watcher_module
from hsid.pipeline.watcher import Watcher
from hsid.queues import ReliableQueue
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
    stage = Watcher(config.paths, config.watcher, config.dedupe, db, redis, queue, stopping,
                    keyspace=keyspace)
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
    assert list(items[0]) == ["camera_id", "file_path", "timestamp"]


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
    await db.execute("INSERT INTO detections (camera_id, file_path) VALUES ('gate', $1)",
                     str(gate / "done.jpg"))

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


async def test_incomplete_jpeg_is_given_up_with_a_warning(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, camera_root: Path
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    with capture_logs() as logs:
        async with running_watcher(config, db, redis) as watcher:
            (gate / "cut.jpg").write_bytes(jpeg(31)[:-50])

            async def given_up() -> bool:
                return any(entry["event"] == "image_given_up" for entry in logs)

            await watcher.until(given_up, "the give-up warning")

    assert await queued(redis, keyspace) == []
    warning = next(entry for entry in logs if entry["event"] == "image_given_up")
    assert (warning["reason"], warning["log_level"]) == ("no_end_marker", "warning")


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

    assert items[0] == {
        "camera_id": "back_yard",
        "file_path": str(camera_root / "Back Yard" / "2025-12-23" / "snap.jpg"),
        "timestamp": items[0]["timestamp"],
    }
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
    stage = Watcher(config.paths, config.watcher, config.dedupe, broken, redis, queue, stopping,
                    keyspace=keyspace)

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
