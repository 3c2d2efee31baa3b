"""Entity recognition in the detect worker: after detections are stored and batched, and
never in their way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.errors import TransientError
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.core.runtime import Runtime
from hsid.daemon.stages import _entity_recognizer
from hsid.entities.embedder import Embedder
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_embedder import write_tiny_embedder
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.detect_worker import DetectWorker
from hsid.pipeline.detector import Detector
from hsid.pipeline.recognizer import EntityRecognizer, load_embedders
from tests import seed
from tests.pipeline.samples import snapshot
from tests.support import eventually

RED = (0, 0, 255)  # BGR: the tiny detector's person
BLUE = (255, 0, 0)  # its car

class BrokenEmbedder(Embedder):
    """A model that fails at run time, as one out of GPU memory does."""

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        raise TransientError("CUDA out of memory")


@pytest.fixture
def worker_config(config: Config, tmp_path: Path) -> Config:
    return config.with_overrides({
        "detector": {"model": str(write_tiny_detector(tmp_path / "tiny.onnx"))},
        "entities": {"model": str(write_tiny_embedder(tmp_path / "tiny-embedder.onnx"))},
    })


@pytest.fixture
async def cameras(db: asyncpg.Pool, camera_root: Path) -> dict[str, Path]:
    folders = {}
    for name in ("front_door", "garage"):
        folders[name] = camera_root / name
        folders[name].mkdir()
        await seed.camera(db, name, str(folders[name]))
    return folders


async def start_worker(config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                       keyspace: Keyspace, embedders: dict[str, Embedder]
                       ) -> tuple[ReliableQueue, asyncio.Event, asyncio.Task[None]]:
    detector = Detector(config.detector, config.paths.state_dir / "engines")
    await asyncio.to_thread(detector.load)
    queue = ReliableQueue(redis, "detection_queue", "test-detect", config.queues,
                          keyspace=keyspace)
    stopping = asyncio.Event()
    recognizer = EntityRecognizer(config.entities, db, embedders)
    worker = DetectWorker(StageContext(config, db, redis, keyspace, stopping=stopping), queue,
                          detector, Batcher(config.batch, redis, keyspace), entities=recognizer)
    return queue, stopping, asyncio.create_task(worker.run())


def item(path: Path, camera: str) -> dict[str, str]:
    return {"camera_id": camera, "file_path": str(path),
            "timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat()}


async def test_the_same_person_on_two_cameras_becomes_one_entity(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    cameras: dict[str, Path],
) -> None:
    embedders = await asyncio.to_thread(load_embedders, worker_config.entities, 1)
    queue, stopping, task = await start_worker(worker_config, db, redis, keyspace, embedders)
    try:
        front = snapshot(cameras["front_door"] / "a.jpg", [((100, 200, 300, 700), RED),
                                                           ((1200, 500, 1700, 800), BLUE)])
        await queue.push(item(front, "front_door"))
        await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM entity_detections"))
        garage = snapshot(cameras["garage"] / "b.jpg", [((900, 300, 1100, 800), RED)])
        await queue.push(item(garage, "garage"))
        await eventually(lambda: db.fetchval("SELECT count(*) = 3 FROM entity_detections"))
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)

    rows = {r["entity_type"]: r for r in await db.fetch("SELECT * FROM entities")}
    assert set(rows) == {"person", "vehicle"}
    assert rows["person"]["detection_count"] == 2
    assert rows["person"]["entity_metadata"]["cameras"] == ["front_door", "garage"]
    assert rows["person"]["entity_metadata"]["colours"] == ["red"]
    assert rows["vehicle"]["entity_metadata"] == {"cameras": ["front_door"], "classes": ["car"],
                                                  "colours": ["blue"]}


async def test_a_failing_embedder_holds_back_no_detection_and_no_batch(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    cameras: dict[str, Path],
) -> None:
    broken = BrokenEmbedder(worker_config.entities.model, (0.5,) * 3, (0.5,) * 3, 1)
    await asyncio.to_thread(broken.load)
    with capture_logs() as logs:
        queue, stopping, task = await start_worker(worker_config, db, redis, keyspace,
                                                   {"person": broken})
        try:
            image = snapshot(cameras["front_door"] / "a.jpg", [((100, 200, 300, 700), RED)])
            await queue.push(item(image, "front_door"))
            await eventually(lambda: db.fetchval("SELECT count(*) FROM detections"))
            # The person at 0.95 took the fast path to the analyzer all the same.
            fast = await eventually(lambda: redis.lrange(keyspace.queue("analysis_queue"), 0, -1))
            await eventually(lambda: any(e["event"] == "entities_failed" for e in logs))
            assert await queue.redis.llen(queue.key) == 0  # acknowledged, not retried
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)
    assert len(json.loads(fast[0])["detection_ids"]) == 1
    failed = next(e for e in logs if e["event"] == "entities_failed")
    assert failed["log_level"] == "warning" and "CUDA out of memory" in failed["error"]
    assert await db.fetchval("SELECT count(*) FROM entities") == 0
    assert not [e for e in logs if e["event"] in ("image_rejected", "job_failed")]


async def test_an_unusable_model_leaves_entities_off_and_health_saying_why(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    missing = worker_config.with_overrides({"entities": {"model": "/nowhere/osnet.onnx"}})
    runtime = Runtime(config=missing, stages=frozenset({"detect"}), pool=db, redis=redis)
    with capture_logs() as logs:
        assert await _entity_recognizer(runtime) is None
    assert runtime.health.info["entities"]["enabled"] is False
    assert "/nowhere/osnet.onnx" in runtime.health.info["entities"]["reason"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["entities_unavailable"]

    working = Runtime(config=worker_config, stages=frozenset({"detect"}), pool=db, redis=redis)
    assert await _entity_recognizer(working) is not None
    assert working.health.info["entities"]["enabled"] is True
