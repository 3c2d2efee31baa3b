"""Detect worker: detection_queue -> decode -> RT-DETRv2 -> detections rows and thumbnails.

Per image: thumbnails are written, then the rows are committed in one transaction (the
thumbnails are removed again if it fails), then clients hear of the detections on
`security_events`, then the detections join their camera's batch, then the queue item is
acknowledged. Storing overlaps the next inference; decoding does not: on a CPU the
model's threads already use every core, and measured on 2 cores (scripts/bench_detect.py)
decoding beside inference slowed inference by more than the decode itself costs.

A job processed twice (a crash between commit and acknowledge) finds its rows already
there and inserts nothing, but batches again those of its detections that no event holds:
its first run may have died before batching them. One already waiting in a batch is then
batched twice, and the analyze worker keeps it out of the second event.

A full state dir costs thumbnails, not detections: the rows are stored with
thumbnail_path NULL until thumbnails can be written again (thumbnails.ThumbnailWriter).

Jobs that were in flight when the daemon died (`crash_count`, set by ReliableQueue.recover)
are suspects: each is taken, decoded, inferred and stored alone, with no other suspect in
flight, so if it kills the daemon again the images that merely shared its batch are not
blamed with it. One that was in flight at POISON_CRASH_COUNT deaths goes to the DLQ
without being decoded again.
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
from hsid.keyspace import Keyspace
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.detector import DecodedImage, Detector, ObjectDetection, decode
from hsid.pipeline.orphans import covered_ids
from hsid.pipeline.thumbnails import ThumbnailWriter, make_thumbnail, thumbnail_path
from hsid.queues import Job, ReliableQueue, process_with_retries
from hsid.services.scene import SceneMonitor

log = structlog.get_logger(__name__)

# The DLQ reason of a job that was in flight at POISON_CRASH_COUNT deaths of the daemon.
POISON_ERROR = "crashed the daemon twice"

LOCK_FILE = "SELECT pg_advisory_xact_lock(hashtext($1))"
SELECT_STORED = """
SELECT id, detected_at, object_type, confidence, thumbnail_path FROM detections
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

    @property
    def suspect(self) -> bool:
        return is_suspect(self.job)


def is_suspect(job: Job) -> bool:
    """In flight when the daemon died, but not yet often enough to be condemned."""
    return 0 < job.crash_count < constants.POISON_CRASH_COUNT


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
                 stopping: asyncio.Event, *, keyspace: Keyspace) -> None:
        self._config = config
        self._events_channel = keyspace.channel(constants.SECURITY_EVENTS_CHANNEL)
        self._pool = pool
        self._redis = redis
        self._queue = queue
        self._detector = detector
        self._batcher = batcher
        self._stopping = stopping
        self._scene = SceneMonitor(pool) if config.scene.enabled else None
        self._thumbnails = ThumbnailWriter()

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
                if any(task.suspect for task in tasks):
                    # Finished before anything else is taken: should it kill the daemon
                    # again, no other suspect is in flight to be blamed with it.
                    if storing is not None:
                        await storing
                        storing = None
                    await self._store_all(tasks)
                    upcoming = asyncio.create_task(self._take_and_decode())
                    continue
                upcoming = asyncio.create_task(self._take_and_decode())
                if storing is not None:
                    await storing
                storing = asyncio.create_task(self._store_all(tasks))
        finally:
            upcoming.cancel()
            try:
                if storing is not None:
                    await storing
            finally:  # jobs still in hand (a crash, or SIGTERM's grace run out) go back
                await self._queue.return_in_flight()

    async def _take_and_decode(self) -> list[ImageTask]:
        if self._stopping.is_set():
            return []
        size = 1 if await self._suspect_waiting() else self._config.detector.batch_size
        jobs = await self._queue.take_batch(size, timeout=1.0)
        tasks = []
        for job in jobs:
            item = job.item
            camera_id, file_path = item.get("camera_id"), item.get("file_path")
            task = ImageTask(job, str(camera_id), Path(str(file_path)))
            if not isinstance(camera_id, str) or not isinstance(file_path, str):
                task.error = PermanentError("queue item lacks camera_id or file_path")
            elif job.crash_count >= constants.POISON_CRASH_COUNT:
                task.error = PermanentError(POISON_ERROR)
            tasks.append(task)
        root, limit = self._config.paths.camera_root, self._config.detector.max_pixels
        await asyncio.gather(*(
            asyncio.to_thread(read_and_decode, t, root, limit) for t in tasks if t.error is None
        ))
        return tasks

    async def _suspect_waiting(self) -> bool:
        """Whether the job at the head of the queue is a suspect, to be taken alone.

        Recovered jobs go back to the head, so this finds them; a suspect that another
        worker's recovery puts there just after the look is still inferred alone.
        """
        raw = await self._queue.redis.lindex(self._queue.key, 0)
        try:
            item = json.loads(raw) if raw is not None else None
        except ValueError:
            return False  # malformed: take_batch dead-letters it
        return isinstance(item, dict) and is_suspect(Job(self._queue.name, raw, item))

    async def _infer(self, tasks: list[ImageTask]) -> None:
        """Infer the decoded images: together, except each suspect in a call of its own."""
        ready = [t for t in tasks if t.image is not None]
        innocent = [t for t in ready if not t.suspect]
        for group in ([innocent] if innocent else []) + [[t] for t in ready if t.suspect]:
            started = time.perf_counter()
            results = await asyncio.to_thread(self._detector.infer, [t.image for t in group])
            elapsed = time.perf_counter() - started
            for task, found in zip(group, results, strict=True):
                task.found = found
                metrics.STAGE_LATENCY.labels("inference").observe(elapsed / len(group))
        if ready:
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
            rebatched = await self._rebatch_stored(task)
            log.info("detections_already_stored", file=str(task.path), rebatched=rebatched)
            return
        for detection in stored:
            metrics.DETECTIONS.labels(detection.object_type).inc()
        log.info("image_processed", file=str(task.path), detections=len(stored))
        if stored:
            await self._announce(task, detected_at, stored)
            await self._batcher.add(task.camera_id, stored)
        await self._watch_scene(task, detected_at)  # after batching: a person is never held up

    async def _rebatch_stored(self, task: ImageTask) -> int:
        """Batch again those of the image's stored detections that no event holds (its first
        run may have died between commit and batching); returns how many."""
        rows = await self._pool.fetch(SELECT_STORED, str(task.path), task.camera_id)
        if not rows:
            return 0
        times = [row["detected_at"] for row in rows]
        covered = await covered_ids(self._pool, task.camera_id, [row["id"] for row in rows],
                                    min(times), max(times))
        orphans = [NewDetection(row["id"], row["object_type"] or "", row["confidence"] or 0.0)
                   for row in rows if row["id"] not in covered]
        if orphans:
            await self._batcher.add(task.camera_id, orphans)
        return len(orphans)

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
                          thumbnails: list[Path | None]) -> list[NewDetection] | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_FILE, str(task.path))
            if stored := await conn.fetch(SELECT_STORED, str(task.path), task.camera_id):
                # Written again under the same names: keep those the stored rows point at.
                kept = {row["thumbnail_path"] for row in stored}
                _remove([path for path in thumbnails if str(path) not in kept])
                return None
            return [
                await self._insert(conn, task, detected_at, found, thumb)
                for found, thumb in zip(task.found or [], thumbnails, strict=True)
            ]

    async def _insert(self, conn: asyncpg.Connection, task: ImageTask, detected_at: datetime,
                      found: ObjectDetection, thumb: Path | None) -> NewDetection:
        assert task.image is not None
        detection_id = await conn.fetchval(
            INSERT_DETECTION, task.camera_id, str(task.path), task.image.mime, detected_at,
            found.object_type, found.confidence, found.bbox_x, found.bbox_y, found.bbox_width,
            found.bbox_height, None if thumb is None else str(thumb))
        return NewDetection(detection_id, found.object_type, found.confidence)

    def _write_thumbnails(self, task: ImageTask, detected_at: datetime) -> list[Path | None]:
        """Blocking: one JPEG crop per detection, written before the rows that point at it;
        None for one the full disk had no room for."""
        assert task.image is not None
        stem = hashlib.sha1(str(task.path).encode()).hexdigest()[:16]
        paths: list[Path | None] = []
        for index, found in enumerate(task.found or []):
            path = thumbnail_path(self._config.paths.state_dir, task.camera_id, detected_at,
                                  f"{stem}_{index}")
            data = make_thumbnail(task.image, found, self._config.detector.thumbnail_size)
            paths.append(path if self._thumbnails.write(path, data) else None)
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
        await self._redis.publish(self._events_channel, json.dumps(message))


def _remove(paths: list[Path | None]) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
