"""Snapshots known by their content: re-used file names, restarts and copies, through the real
watcher and detect worker on the real file system (hsid/pipeline/snapshots.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from hsid.core.config import Config
from hsid.core.constants import DETECTION_QUEUE, SNAPSHOTS_DIR
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.detect_worker import DetectWorker
from hsid.pipeline.detector import Detector
from hsid.pipeline.snapshots import copy_path
from hsid.pipeline.watcher import Watcher
from tests.pipeline.samples import FAST_SETTLE, snapshot
from tests.support import eventually

RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR: a person and a car to the tiny detector


def picture(path: Path, n: int) -> Path:
    """The n-th distinct snapshot: a person whose place depends on n."""
    return snapshot(path, [((100 + 60 * n, 100, 300 + 60 * n, 500), RED)], size=(640, 480))


@pytest.fixture
def pipeline_config(config: Config, tmp_path: Path) -> Config:
    model = write_tiny_detector(tmp_path / "tiny.onnx")
    return config.with_overrides({"detector": {"model": str(model), "batch_size": 1},
                                  "watcher": FAST_SETTLE})


@pytest.fixture
async def detector(pipeline_config: Config) -> Detector:
    loaded = Detector(pipeline_config.detector, pipeline_config.paths.state_dir / "engines")
    await asyncio.to_thread(loaded.load)
    return loaded


@asynccontextmanager
async def running(config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                  detector: Detector | None) -> AsyncIterator[ReliableQueue]:
    """The watcher, and the detect worker unless `detector` is None, on one queue."""
    keyspace = Keyspace.from_config(config.redis)
    stopping = asyncio.Event()
    queue = ReliableQueue(redis, DETECTION_QUEUE, "test", config.queues, keyspace=keyspace)
    stages = [Watcher(StageContext(config, db, redis, keyspace, stopping=stopping), queue)]
    if detector is not None:
        stages.append(DetectWorker(StageContext(config, db, redis, keyspace, stopping=stopping),
                                   queue, detector, Batcher(config.batch, redis, keyspace)))
    tasks = [asyncio.create_task(stage.run()) for stage in stages]
    try:
        yield queue
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def snapshots_when(db: asyncpg.Pool, count: int) -> list[asyncpg.Record] | None:
    rows = await db.fetch("SELECT * FROM snapshots ORDER BY taken_at")
    return rows if len(rows) >= count else None


async def detections_of(db: asyncpg.Pool, row: asyncpg.Record) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM detections WHERE id = any($1::int[])",
                          row["detection_ids"])


def all_files(paths: list[str]) -> bool:
    return all(os.path.isfile(path) for path in paths)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_a_name_overwritten_in_place_three_times_gives_three_snapshots(
    pipeline_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, detector: Detector,
    camera_root: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    path = gate / "snapshot.jpg"
    async with running(pipeline_config, db, redis, detector):
        for n in range(3):
            picture(path, n)  # the camera rewrites its one file in place
            rows = await eventually(lambda n=n: snapshots_when(db, n + 1), within=15)

    assert len({row["sha256"] for row in rows}) == 3
    thumbnails = []
    for n, row in enumerate(rows):
        [detection] = await detections_of(db, row)
        thumbnails.append(detection["thumbnail_path"])
        assert detection["file_path"] == row["image_path"]
        if n > 0:  # the name came again: hsid keeps its own copy of what it analysed
            assert row["image_path"] == str(copy_path(pipeline_config.paths.state_dir, "gate",
                                                      row["sha256"], ".jpg"))
            assert sha256(row["image_path"]) == row["sha256"]
    assert len(set(thumbnails)) == 3
    assert all_files(thumbnails)


async def test_a_temporary_name_renamed_onto_a_fixed_name_three_times_gives_three_snapshots(
    pipeline_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, detector: Detector,
    camera_root: Path, tmp_path: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    async with running(pipeline_config, db, redis, detector):
        for n in range(3):
            upload = gate / "camera.jpg.part"  # written under a temporary name, then renamed
            upload.write_bytes(picture(tmp_path / f"source-{n}.jpg", n).read_bytes())
            os.replace(upload, gate / "camera.jpg")
            rows = await eventually(lambda n=n: snapshots_when(db, n + 1), within=15)

    assert len({row["sha256"] for row in rows}) == 3
    assert {row["file_path"] for row in rows} == {str(gate / "camera.jpg")}
    assert [len(await detections_of(db, row)) for row in rows] == [1, 1, 1]
    copies = sorted((pipeline_config.paths.state_dir / SNAPSHOTS_DIR).rglob("*.jpg"))
    assert len(copies) == 2  # the second and third, once the name had come again


async def test_a_restart_queues_nothing_again_even_an_image_without_detections(
    pipeline_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    detector: Detector, camera_root: Path,
) -> None:
    gate = camera_root / "gate"
    gate.mkdir()
    picture(gate / "person.jpg", 0)
    snapshot(gate / "nothing.jpg", [], size=(640, 480))  # gives no detection
    (gate / "empty.jpg").write_bytes(b"")  # dead-lettered
    async with running(pipeline_config, db, redis, detector):
        rows = await eventually(lambda: snapshots_when(db, 3), within=15)
    assert sorted(row["outcome"] for row in rows) == ["dead_lettered", "processed", "processed"]

    async with running(pipeline_config, db, redis, None) as queue:  # the watcher alone
        await asyncio.sleep(2 * FAST_SETTLE["stall_seconds"])
        assert await queue.length() == 0
