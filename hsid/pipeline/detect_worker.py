"""Detect worker: detection_queue -> decode -> RT-DETRv2 -> detections rows and thumbnails.

Per image: the bytes read must be those the watcher hashed (snapshots.py: an upload is
known by its content), thumbnails are written, then the rows and the snapshot's record are
committed in one transaction (the thumbnails are removed again if it fails), so an image
that gave no detection is not processed again either; then clients hear of the detections on
`security_events`, then the detections join their camera's batch, then the queue item is
acknowledged. Storing overlaps the next inference; decoding does not: on a CPU the
model's threads already use every core, and measured on 2 cores (scripts/bench_detect.py)
decoding beside inference slowed inference by more than the decode itself costs.

When the snapshot was taken (capture_time.py) is read from the same bytes, its names and
its mtime, and stored with its rows (`detections.captured_at`, hsid's extension; detected_at
stays the processing time, as the reference has it). The batcher files a backlog (taken well
before it arrived) apart from the camera's live batch.

A job processed twice (a crash between commit and acknowledge) finds its snapshot already
recorded and inserts nothing, but batches again those of its detections that no event holds:
its first run may have died before batching them. One already waiting in a batch is then
batched twice, and the analyze worker keeps it out of the second event.

Person and vehicle detections are recognised as entities (entities/recognizer.py) once
every image of the inference batch is stored and batched: the crops of all of them are
embedded in one model call, in a thread, and a failure costs only the entities. A job run
twice stores nothing new, so recognises nothing again; a detection is linked to one entity
at most (entities/matcher.py).

A full state dir costs thumbnails, not detections: the rows are stored with
thumbnail_path NULL until thumbnails can be written again (state_files.StateFileWriter).

Jobs that were in flight when the daemon died (`crash_count`, set by ReliableQueue.recover)
are suspects: each is taken, decoded, inferred and stored alone, with no other suspect in
flight, so if it kills the daemon again the images that merely shared its batch are not
blamed with it. One that was in flight at POISON_CRASH_COUNT deaths goes to the DLQ
without being decoded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import asyncpg
import redis.asyncio as aioredis
import structlog

from hsid.cameras.tamper import SceneMonitor
from hsid.core import constants, metrics
from hsid.core.config import Config, site_zone
from hsid.core.errors import STORE_ERRORS, PermanentError, TransientError
from hsid.core.keyspace import Keyspace
from hsid.core.messages import (
    DetectedObject,
    DetectionData,
    DetectionItem,
    DetectionMessage,
    MalformedItem,
    decode_item,
)
from hsid.core.queues import Job, ReliableQueue, process_with_retries
from hsid.core.runtime import honour_cancellation
from hsid.entities.recognizer import Candidate, EntityRecognizer
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.capture_time import Capture, CaptureClock
from hsid.pipeline.detector import DecodedImage, Detector, ObjectDetection, decode
from hsid.pipeline.orphans import covered_ids
from hsid.pipeline.snapshots import (
    SNAPSHOTS_DIR,
    Upload,
    is_processed,
    read_upload,
    record,
    sha256_of,
)
from hsid.pipeline.state_files import StateFileWriter
from hsid.pipeline.thumbnails import make_thumbnail, thumbnail_path

log = structlog.get_logger(__name__)

# The DLQ reason of a job that was in flight at POISON_CRASH_COUNT deaths of the daemon.
POISON_ERROR = "crashed the daemon twice"

LOCK_SNAPSHOT = "SELECT pg_advisory_xact_lock(hashtext($1))"
SELECT_STORED = """
SELECT id, detected_at, captured_at, object_type, confidence, thumbnail_path FROM detections
WHERE id = any($1::int[]) ORDER BY id
"""
INSERT_DETECTION = """
INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, confidence,
                        bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path, captured_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class StoredDetection(NewDetection):
    """A detection as stored: what the batcher needs, and what a retry must keep."""

    detected_at: datetime
    thumbnail_path: str | None
    captured_at: datetime | None = None  # when its snapshot was taken (capture_time.py)

    @property
    def happened_at(self) -> datetime:
        """When it happened: the capture time, else (rows stored before there was one)
        the processing time."""
        return self.captured_at or self.detected_at

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredDetection:
        return cls(row["id"], row["object_type"] or "", row["confidence"] or 0.0,
                   row["detected_at"], row["thumbnail_path"], row["captured_at"])


@dataclass(slots=True)
class ImageTask:
    """One queue item on its way through the worker."""

    job: Job
    camera_id: str
    path: Path  # where the upload arrived (the item's file_path)
    upload: Upload | None = None  # what it is; from the item, else from the bytes read
    image: DecodedImage | None = None
    error: PermanentError | None = None
    found: list[ObjectDetection] | None = None
    arrived_at: datetime | None = None  # the item's timestamp: when the watcher took it
    capture: Capture | None = None  # when the snapshot was taken, read from its bytes
    stored: list[StoredDetection] | None = None  # its new rows, in `found`'s order

    @property
    def suspect(self) -> bool:
        return is_suspect(self.job)


def is_suspect(job: Job) -> bool:
    """In flight when the daemon died, but not yet often enough to be condemned."""
    return 0 < job.crash_count < constants.POISON_CRASH_COUNT


def read_and_decode(task: ImageTask, roots: tuple[Path, ...], max_pixels: int,
                    clock: CaptureClock | None = None) -> None:
    """Blocking: fill `task.image` (and `task.upload` when the item had none, and
    `task.capture` given a `clock`), or `task.error` with why the file cannot be used.

    The bytes read must be the ones the watcher hashed: a camera that overwrote the file
    since leaves an error naming the lost content (its new upload is queued on its own).
    Only files under `roots` (the camera root, hsid's snapshot copies) are read.
    """
    try:
        path = Path(task.upload.image_path) if task.upload else task.path
        if path.is_symlink() or not any(path.resolve().is_relative_to(root) for root in roots):
            raise PermanentError(f"{path} is a symlink or outside the camera root")
        started = time.perf_counter()
        try:
            data, size, mtime_ns = read_upload(path)
        except FileNotFoundError as err:
            raise PermanentError(f"{path} no longer exists") from err
        except OSError as err:
            raise PermanentError(f"{path} cannot be read: {err}") from err
        sha256 = sha256_of(data)
        if task.upload is None:
            task.upload = Upload(sha256, str(path), size, mtime_ns)
        elif task.upload.sha256 != sha256:
            raise PermanentError(f"{path} was overwritten before it could be read: the "
                                 f"upload with sha256 {task.upload.sha256} is gone")
        if clock is not None:
            task.capture = clock.capture(data, task.path, task.upload.mtime_ns,
                                         task.arrived_at or datetime.now(UTC))
        task.image = decode(data, max_pixels)
        metrics.STAGE_LATENCY.labels("decode").observe(time.perf_counter() - started)
    except PermanentError as err:
        task.error = err


class DetectWorker:
    """Stage: runs until `stopping` is set; items left in flight are recovered on restart."""

    def __init__(self, config: Config, pool: asyncpg.Pool, redis: aioredis.Redis,
                 queue: ReliableQueue, detector: Detector, batcher: Batcher,
                 stopping: asyncio.Event, *, keyspace: Keyspace,
                 entities: EntityRecognizer | None = None) -> None:
        self._config = config
        self._entities = entities  # None: entities off
        self._events_channel = keyspace.channel(constants.SECURITY_EVENTS_CHANNEL)
        self._pool = pool
        self._redis = redis
        self._queue = queue
        self._detector = detector
        self._batcher = batcher
        self._stopping = stopping
        self._scene = SceneMonitor(pool) if config.scene.enabled else None
        self._thumbnails = StateFileWriter("thumbnails")
        self._clock = CaptureClock(site_zone(config.site), config.paths.camera_root.absolute(),
                                   config.watcher.max_backlog_hours)

    async def run(self) -> None:
        await self._queue.recover()
        storing: asyncio.Task[None] | None = None
        upcoming = asyncio.create_task(self._take_and_decode())
        try:
            while True:
                honour_cancellation()
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
            item = job.item  # decoded and checked by the queue (messages.DetectionItem)
            assert isinstance(item, DetectionItem)
            task = ImageTask(job, item.camera_id, Path(item.file_path), upload_of(item),
                             arrived_at=item.timestamp or datetime.now(UTC))
            if job.crash_count >= constants.POISON_CRASH_COUNT:
                task.error = PermanentError(POISON_ERROR)
            tasks.append(task)
        paths, limit = self._config.paths, self._config.detector.max_pixels
        roots = (paths.camera_root.resolve(), (paths.state_dir / SNAPSHOTS_DIR).resolve())
        await asyncio.gather(*(
            asyncio.to_thread(read_and_decode, t, roots, limit, self._clock)
            for t in tasks if t.error is None
        ))
        return tasks

    async def _suspect_waiting(self) -> bool:
        """Whether the job at the head of the queue is a suspect, to be taken alone.

        Recovered jobs go back to the head, so this finds them; a suspect that another
        worker's recovery puts there just after the look is still inferred alone.
        """
        raw = await self._queue.redis.lindex(self._queue.key, 0)
        if raw is None:
            return False
        try:
            item = decode_item(self._queue.name, raw)
        except MalformedItem:
            return False  # take_batch dead-letters it
        return is_suspect(Job(self._queue.name, raw, item))

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
        await self._recognise(tasks)

    async def _recognise(self, tasks: list[ImageTask]) -> None:
        """Entities of the images' new person and vehicle detections, once all of them are
        batched: best effort, it never raises (entities/recognizer.py)."""
        if self._entities is None:
            return
        candidates = [
            Candidate(row.id, task.camera_id, row.happened_at, found, task.image,
                      task.upload.sha256 if task.upload else str(task.path))
            for task in tasks if task.stored and task.image is not None
            for row, found in zip(task.stored, task.found or [], strict=True)
        ]
        await self._entities.recognise(candidates)

    async def _store(self, task: ImageTask) -> None:
        if task.error is not None:
            await self._reject(task, task.error)
        assert task.image is not None and task.found is not None and task.upload is not None
        if task.image.truncated:
            log.warning("image_truncated", file=str(task.path), size=task.upload.size,
                        action="decoded as far as it goes")
        detected_at = datetime.now(UTC)
        stored, fresh = await self._commit(task, detected_at)
        metrics.IMAGES_PROCESSED.labels(task.camera_id).inc()
        if not fresh:
            rebatched = await self._rebatch(task, stored)
            log.info("detections_already_stored", file=str(task.path), rebatched=rebatched)
            return
        for detection in stored:
            metrics.DETECTIONS.labels(detection.object_type).inc()
        log.info("image_processed", file=str(task.path), detections=len(stored),
                 sha256=task.upload.sha256)
        if stored:
            await self._announce(task, detected_at, stored)
            await self._batcher.add(task.camera_id, stored, captured_at=stored[0].captured_at,
                                    arrived_at=task.arrived_at)
            task.stored = stored
        await self._watch_scene(task, detected_at)  # after batching: a person is never held up

    async def _reject(self, task: ImageTask, error: PermanentError) -> NoReturn:
        """Dead-letter the job (by raising `error`), recording its snapshot first so that no
        restart waits on the same broken file again."""
        metrics.IMAGES_REJECTED.labels(task.camera_id).inc()
        log.warning("image_rejected", file=str(task.path), reason=str(error))
        if task.upload is not None:
            with contextlib.suppress(asyncpg.ForeignKeyViolationError):  # camera deleted
                await record(self._pool, task.upload, str(task.path), task.camera_id, [],
                             reason=str(error))
        raise error

    async def _rebatch(self, task: ImageTask, stored: list[StoredDetection]) -> int:
        """Batch again those of an image's stored detections that no event holds (its first
        run may have died between commit and batching); returns how many."""
        if not stored:
            return 0
        times = [row.happened_at for row in stored]
        covered = await covered_ids(self._pool, task.camera_id, [row.id for row in stored],
                                    min(times), max(times))
        orphans = [row for row in stored if row.id not in covered]
        if orphans:
            await self._batcher.add(task.camera_id, orphans, captured_at=orphans[0].captured_at,
                                    arrived_at=task.arrived_at)
        return len(orphans)

    async def _watch_scene(self, task: ImageTask, detected_at: datetime) -> None:
        """Tamper watch, best-effort: the image's rows are committed whatever it finds."""
        if self._scene is None or task.image is None:
            return
        try:
            await self._scene.observe(task.camera_id, task.image.tensor, detected_at)
        except STORE_ERRORS as err:
            log.warning("scene_watch_failed", error=str(err) or type(err).__name__)

    async def _commit(self, task: ImageTask,
                      detected_at: datetime) -> tuple[list[StoredDetection], bool]:
        """Insert the image's rows and its snapshot record, unless its content was stored
        already: (the rows, True) when new, (the earlier rows, False) when not."""
        thumbnails = await asyncio.to_thread(self._write_thumbnails, task, detected_at)
        try:
            with metrics.STAGE_LATENCY.labels("database").time():
                return await self._insert_all(task, detected_at, thumbnails)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            _remove(thumbnails)
            raise TransientError(f"storing detections failed: {err}") from err

    async def _insert_all(self, task: ImageTask, detected_at: datetime,
                          thumbnails: list[Path | None]) -> tuple[list[StoredDetection], bool]:
        assert task.upload is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_SNAPSHOT, task.upload.sha256)
            if (ids := await is_processed(conn, task.upload.sha256)) is not None:
                stored = [StoredDetection.from_row(row)
                          for row in await conn.fetch(SELECT_STORED, ids)]
                # Written again under the same names: keep those the stored rows point at.
                kept = {row.thumbnail_path for row in stored}
                _remove([path for path in thumbnails if str(path) not in kept])
                return stored, False
            stored = [await self._insert(conn, task, detected_at, found, thumb)
                      for found, thumb in zip(task.found or [], thumbnails, strict=True)]
            await record(conn, task.upload, str(task.path), task.camera_id,
                         [row.id for row in stored])
            return stored, True

    async def _insert(self, conn: asyncpg.Connection, task: ImageTask, detected_at: datetime,
                      found: ObjectDetection, thumb: Path | None) -> StoredDetection:
        assert task.image is not None and task.upload is not None
        thumbnail = None if thumb is None else str(thumb)
        captured_at = task.capture.at if task.capture else None
        detection_id = await conn.fetchval(
            INSERT_DETECTION, task.camera_id, task.upload.image_path, task.image.mime,
            detected_at, found.object_type, found.confidence, found.bbox_x, found.bbox_y,
            found.bbox_width, found.bbox_height, thumbnail, captured_at)
        return StoredDetection(detection_id, found.object_type, found.confidence, detected_at,
                               thumbnail, captured_at)

    def _write_thumbnails(self, task: ImageTask, detected_at: datetime) -> list[Path | None]:
        """Blocking: one JPEG crop per detection, written before the rows that point at it;
        None for one the full disk had no room for. Named by the snapshot's content, so
        uploads under one re-used file name never share (or delete) each other's."""
        assert task.image is not None and task.upload is not None
        stem = task.upload.sha256[:16]
        paths: list[Path | None] = []
        for index, found in enumerate(task.found or []):
            path = thumbnail_path(self._config.paths.state_dir, task.camera_id, detected_at,
                                  f"{stem}_{index}")
            data = make_thumbnail(task.image, found, self._config.detector.thumbnail_size)
            paths.append(path if self._thumbnails.write(path, data) else None)
        return paths

    async def _announce(self, task: ImageTask, detected_at: datetime,
                        stored: list[NewDetection]) -> None:
        message = DetectionMessage(data=DetectionData(
            camera_id=task.camera_id,
            file_path=task.upload.image_path if task.upload else str(task.path),
            detected_at=detected_at,
            captured_at=task.capture.at if task.capture else None,
            detections=[DetectedObject(id=d.id, object_type=d.object_type,
                                       confidence=d.confidence) for d in stored]))
        await self._redis.publish(self._events_channel, message.encode())


def upload_of(item: DetectionItem) -> Upload | None:
    """The upload an item describes; None for an item without one (queued by an older
    hsid, or by hand): the worker then reads `file_path` and hashes what it read."""
    if (item.sha256 is None or item.image_path is None or item.size is None
            or item.mtime_ns is None):
        return None
    return Upload(item.sha256, item.image_path, item.size, item.mtime_ns)


def _remove(paths: list[Path | None]) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
