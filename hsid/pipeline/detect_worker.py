"""Detect worker: detection_queue -> decode -> RT-DETRv2 -> detections rows and thumbnails.

Per image: thumbnails are written, then the rows are committed in one transaction (the
thumbnails are removed again if it fails), then clients hear of the detections on
`security_events`, then the detections join their camera's batch, then the queue item is
acknowledged. Storing overlaps the next inference; decoding does not: on a CPU the
model's threads already use every core, and measured on 2 cores (scripts/bench_detect.py)
decoding beside inference slowed inference by more than the decode itself costs.

A job processed twice (a crash between commit and acknowledge) finds its rows already
there and inserts nothing; it is not batched again, because its first run may already
have batched it. A crash in the instant between commit and batching therefore leaves
those detections stored but not analysed, which is the price of never analysing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
import structlog

from hsid import constants, metrics
from hsid.config import Config
from hsid.errors import STORE_ERRORS, PermanentError, TransientError
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.detector import DecodedImage, Detector, ObjectDetection, decode
from hsid.pipeline.thumbnails import make_thumbnail, thumbnail_path, write_thumbnail
from hsid.queues import Job, ReliableQueue, process_with_retries
from hsid.services.scene import SceneMonitor

log = structlog.get_logger(__name__)

LOCK_FILE = "SELECT pg_advisory_xact_lock(hashtext($1))"
SELECT_STORED = """
SELECT id, object_type, confidence FROM detections
WHERE file_path = $1 AND camera_id = $2 ORDER BY id
"""
INSERT_DETECTION = """
INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, confidence,
                        bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING id
"""


@dataclass(slots=True)
class ImageTask:
    """One queue item on its way through the worker."""

    job: Job
    camera_id: str
    path: Path
    image: DecodedImage | None = None
    error: PermanentError | None = None
    found: list[ObjectDetection] | None = None


def read_and_decode(task: ImageTask, camera_root: Path, max_pixels: int) -> None:
    """Blocking: fill `task.image`, or `task.error` with why the file cannot be used."""
    try:
        path = task.path
        if path.is_symlink() or not path.resolve().is_relative_to(camera_root.resolve()):
            raise PermanentError(f"{path} is a symlink or outside the camera root")
        started = time.perf_counter()
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise PermanentError(f"{path} no longer exists") from err
        except OSError as err:
            raise PermanentError(f"{path} cannot be read: {err}") from err
        task.image = decode(data, max_pixels)
        metrics.STAGE_LATENCY.labels("decode").observe(time.perf_counter() - started)
    except PermanentError as err:
        task.error = err


class DetectWorker:
    """Stage: runs until `stopping` is set; items left in flight are recovered on restart."""

    def __init__(self, config: Config, pool: asyncpg.Pool, redis: aioredis.Redis,
                 queue: ReliableQueue, detector: Detector, batcher: Batcher,
                 stopping: asyncio.Event) -> None:
        self._config = config
        self._pool = pool
        self._redis = redis
        self._queue = queue
        self._detector = detector
        self._batcher = batcher
        self._stopping = stopping
        self._scene = SceneMonitor(pool) if config.scene.enabled else None

    async def run(self) -> None:
        await self._queue.recover()
        storing: asyncio.Task[None] | None = None
        upcoming = asyncio.create_task(self._take_and_decode())
        try:
            while True:
                tasks = await upcoming
                if self._stopping.is_set() and not tasks:
                    break
                await self._infer(tasks)
                upcoming = asyncio.create_task(self._take_and_decode())
                if storing is not None:
                    await storing
                storing = asyncio.create_task(self._store_all(tasks))
        finally:
            upcoming.cancel()
            if storing is not None:
                await storing

    async def _take_and_decode(self) -> list[ImageTask]:
        if self._stopping.is_set():
            return []
        jobs = await self._queue.take_batch(self._config.detector.batch_size, timeout=1.0)
        tasks = []
        for job in jobs:
            item = job.item
            camera_id, file_path = item.get("camera_id"), item.get("file_path")
            task = ImageTask(job, str(camera_id), Path(str(file_path)))
            if not isinstance(camera_id, str) or not isinstance(file_path, str):
                task.error = PermanentError("queue item lacks camera_id or file_path")
            tasks.append(task)
        root, limit = self._config.paths.camera_root, self._config.detector.max_pixels
        await asyncio.gather(*(
            asyncio.to_thread(read_and_decode, t, root, limit) for t in tasks if t.error is None
        ))
        return tasks

    async def _infer(self, tasks: list[ImageTask]) -> None:
        ready = [t for t in tasks if t.image is not None]
        if not ready:
            return
        started = time.perf_counter()
        results = await asyncio.to_thread(self._detector.infer, [t.image for t in ready])
        elapsed = time.perf_counter() - started
        for task, found in zip(ready, results, strict=True):
            task.found = found
            metrics.STAGE_LATENCY.labels("inference").observe(elapsed / len(ready))
        metrics.INFERENCE_FPS.set(self._detector.inference_fps)

    async def _store_all(self, tasks: list[ImageTask]) -> None:
        for task in tasks:
            with structlog.contextvars.bound_contextvars(camera_id=task.camera_id):
                await process_with_retries(
                    self._queue, task.job, lambda _job, t=task: self._store(t),
                    self._config.queues)

    async def _store(self, task: ImageTask) -> None:
        if task.error is not None:
            metrics.IMAGES_REJECTED.labels(task.camera_id).inc()
            log.warning("image_rejected", file=str(task.path), reason=str(task.error))
            raise task.error
        assert task.image is not None and task.found is not None
        detected_at = datetime.now(UTC)
        stored = await self._commit(task, detected_at)
        metrics.IMAGES_PROCESSED.labels(task.camera_id).inc()
        if stored is None:
            log.info("detections_already_stored", file=str(task.path))
            return
        for detection in stored:
            metrics.DETECTIONS.labels(detection.object_type).inc()
        log.info("image_processed", file=str(task.path), detections=len(stored))
        if stored:
            await self._announce(task, detected_at, stored)
            await self._batcher.add(task.camera_id, stored)
        await self._watch_scene(task, detected_at)  # after batching: a person is never held up

    async def _watch_scene(self, task: ImageTask, detected_at: datetime) -> None:
        """Tamper watch, best-effort: the image's rows are committed whatever it finds."""
        if self._scene is None or task.image is None:
            return
        try:
            await self._scene.observe(task.camera_id, task.image.tensor, detected_at)
        except STORE_ERRORS as err:
            log.warning("scene_watch_failed", error=str(err) or type(err).__name__)

    async def _commit(self, task: ImageTask, detected_at: datetime) -> list[NewDetection] | None:
        """Insert the image's rows unless they exist; None when they already did."""
        thumbnails = await asyncio.to_thread(self._write_thumbnails, task, detected_at)
        try:
            with metrics.STAGE_LATENCY.labels("database").time():
                return await self._insert_all(task, detected_at, thumbnails)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            _remove(thumbnails)
            raise TransientError(f"storing detections failed: {err}") from err

    async def _insert_all(self, task: ImageTask, detected_at: datetime,
                          thumbnails: list[Path]) -> list[NewDetection] | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_FILE, str(task.path))
            if await conn.fetch(SELECT_STORED, str(task.path), task.camera_id):
                _remove(thumbnails)
                return None
            return [
                await self._insert(conn, task, detected_at, found, thumb)
                for found, thumb in zip(task.found or [], thumbnails, strict=True)
            ]

    async def _insert(self, conn: asyncpg.Connection, task: ImageTask, detected_at: datetime,
                      found: ObjectDetection, thumb: Path) -> NewDetection:
        assert task.image is not None
        detection_id = await conn.fetchval(
            INSERT_DETECTION, task.camera_id, str(task.path), task.image.mime, detected_at,
            found.object_type, found.confidence, found.bbox_x, found.bbox_y, found.bbox_width,
            found.bbox_height, str(thumb))
        return NewDetection(detection_id, found.object_type, found.confidence)

    def _write_thumbnails(self, task: ImageTask, detected_at: datetime) -> list[Path]:
        """Blocking: one JPEG crop per detection, written before the rows that point at it."""
        assert task.image is not None
        stem = hashlib.sha1(str(task.path).encode()).hexdigest()[:16]
        paths = []
        for index, found in enumerate(task.found or []):
            path = thumbnail_path(self._config.paths.state_dir, task.camera_id, detected_at,
                                  f"{stem}_{index}")
            write_thumbnail(path, make_thumbnail(task.image, found,
                                                 self._config.detector.thumbnail_size))
            paths.append(path)
        return paths

    async def _announce(self, task: ImageTask, detected_at: datetime,
                        stored: list[NewDetection]) -> None:
        message = {"type": "detection", "data": {
            "camera_id": task.camera_id,
            "file_path": str(task.path),
            "detected_at": detected_at.isoformat(),
            "detections": [{"id": d.id, "object_type": d.object_type,
                            "confidence": d.confidence} for d in stored],
        }}
        await self._redis.publish(constants.SECURITY_EVENTS_CHANNEL, json.dumps(message))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
