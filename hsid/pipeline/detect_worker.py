"""Detect worker: detection_queue -> decode -> RT-DETRv2 -> detections rows and thumbnails.

Per image: the bytes read must be those the watcher hashed (snapshots.py: an upload is
known by its content), thumbnails are written, then the rows and the snapshot's record are
committed in one transaction (the thumbnails are removed again if it fails), so an image
that gave no detection is not processed again either; then clients hear of the detections on
`security_events`, then the detections join their camera's batch, then the queue item is
acknowledged.

The worker is a pipeline of three steps, each a task, handing whole batches (take_batch, up
to batch_size jobs) on through asyncio queues of one: take and decode, infer, store. The
next batch is decoded while the current one is inferred, and the batches before it are
stored meanwhile; one step at a time per batch, in the order taken, so a camera's images
are stored in the order they arrived, and every job is acknowledged (or dead-lettered) only
once it is stored and batched, as before. On the CPU the model's threads hold every core:
decoding and thumbnails run in one helper thread at a lower priority (nice +10), so they take
the time the model leaves idle rather than preempting its threads, yet still get a share of
a machine that something else keeps busy (SCHED_IDLE would starve them there: a home server
transcoding video would stop hsid's detection); the model's idle threads sleep instead of
spinning (detector.py). Measured with scripts/bench_detect.py.

When the snapshot was taken (capture_time.py) is read from the same bytes, its names and
its mtime, and stored with its rows (`detections.captured_at`, hsid's extension; detected_at
stays the processing time, as the reference has it). The batcher files a backlog (taken well
before it arrived) apart from the camera's live batch.

A job processed twice (a crash between commit and acknowledge) finds its snapshot already
recorded and inserts nothing, but batches again those of its detections that no event holds:
its first run may have died before batching them. One already waiting in a batch is then
batched twice, and the analyze worker keeps it out of the second event.

Person and vehicle detections are recognised as entities (pipeline/recognizer.py) once
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
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import structlog

from hsid.cameras.tamper import SceneMonitor
from hsid.core import constants, metrics
from hsid.core.config import site_zone
from hsid.core.constants import SNAPSHOTS_DIR
from hsid.core.context import StageContext
from hsid.core.errors import STORE_ERRORS, PermanentError, TransientError
from hsid.core.messages import (
    DetectedObject,
    DetectionData,
    DetectionItem,
    DetectionMessage,
    MalformedItem,
    decode_item,
)
from hsid.core.queues import Job, ReliableQueue, as_bytes, process_with_retries
from hsid.core.runtime import honour_cancellation
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.capture_time import Capture, CaptureClock
from hsid.pipeline.detector import (
    CPU_PROVIDER,
    DecodedImage,
    Detector,
    ObjectDetection,
    decode,
)
from hsid.pipeline.orphans import covered_ids
from hsid.pipeline.recognizer import Candidate, EntityRecognizer
from hsid.pipeline.snapshots import (
    Upload,
    is_processed,
    read_upload,
    record,
    sha256_of,
)
from hsid.pipeline.state_files import StateFileWriter
from hsid.pipeline.thumbnails import make_thumbnail, thumbnail_path

log = structlog.get_logger(__name__)

T = TypeVar("T")
# How much lower than the daemon's the helper thread's priority (nice) is: decoding and
# thumbnails use the cores a CPU model leaves idle instead of preempting its threads
# (measured on 2 cores with the model on both: nice 10 0.76-0.79x of bare onnxruntime at
# batch 4, the same priority 0.76x; with the model on half the cores, the default, 0.93x).
HELPER_NICE = 10
# The DLQ reason of a job that was in flight at POISON_CRASH_COUNT deaths of the daemon.
POISON_ERROR = "crashed the daemon twice"

LOCK_SNAPSHOT = "SELECT pg_advisory_xact_lock(hashtext($1))"
SELECT_STORED = """
SELECT id, detected_at, captured_at, object_type, confidence, thumbnail_path FROM detections
WHERE id = any($1::int[]) ORDER BY id
"""
# All of an image's rows in one statement (one round trip, not one per detection), in
# `found`'s order: identity values are drawn as the ordered rows are inserted, so the ids,
# sorted, follow that order.
INSERT_DETECTIONS = """
INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, confidence,
                        bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path, captured_at)
SELECT $1, $2, $3, $4, d.object_type, d.confidence, d.bbox_x, d.bbox_y, d.bbox_width,
       d.bbox_height, d.thumbnail_path, $5
FROM unnest($6::varchar[], $7::float8[], $8::int[], $9::int[], $10::int[], $11::int[],
            $12::varchar[]) WITH ORDINALITY
     AS d(object_type, confidence, bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path, n)
ORDER BY d.n
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
class _Batch:
    """The images of one take_batch, handed from step to step (DetectWorker.run)."""

    tasks: list[ImageTask]
    stored: asyncio.Event = field(default_factory=asyncio.Event)  # set once all are done


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


def _yield_to_model() -> None:
    """Helper thread start, when the model runs on the CPU: the thread runs HELPER_NICE
    steps below the process (Linux sets a nice value per thread), or as it is where that
    is not allowed."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + HELPER_NICE)


class DetectWorker:
    """Stage: runs until `stopping` is set; items left in flight are recovered on restart."""

    def __init__(self, context: StageContext, queue: ReliableQueue, detector: Detector,
                 batcher: Batcher, *, entities: EntityRecognizer | None = None) -> None:
        """`queue`: the detection_queue; `entities`: None when entities are off."""
        config = self._config = context.config
        pool = self._pool = context.pool
        self._entities = entities
        self._events_channel = context.keyspace.channel(constants.SECURITY_EVENTS_CHANNEL)
        self._redis = context.redis
        self._queue = queue
        self._detector = detector
        self._batcher = batcher
        self._stopping = context.stopping
        self._scene = SceneMonitor(pool) if config.scene.enabled else None
        self._thumbnails = StateFileWriter("thumbnails")
        self._helpers: ThreadPoolExecutor | None = None  # decoding, thumbnails; in run()
        self._clock = CaptureClock(site_zone(config.site), config.paths.camera_root.absolute(),
                                   config.watcher.max_backlog_hours)

    async def run(self) -> None:
        """Three steps, each its own task, handing batches on through queues of one:
        take and decode (`_feed`), infer (`_infer_batches`), store (`_store_batches`).
        Returns once `stopping` is set and every batch taken is stored; on a failure or
        cancellation, the batch being stored is finished and the jobs still in hand go
        back to the queue."""
        await self._queue.recover()
        # On the CPU the model's threads hold every core: one helper thread beside them,
        # on the time they leave idle, or each parallel step of the model waits for a
        # preempted thread. On a GPU, one per image of a batch, as any other thread.
        if self._detector.provider == CPU_PROVIDER:
            helpers = ThreadPoolExecutor(1, "detect-helper", _yield_to_model)
        else:
            helpers = ThreadPoolExecutor(self._detector.max_batch, "detect-helper")
        self._helpers = helpers
        decoded: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        inferred: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        steps = (asyncio.create_task(self._feed(decoded), name="detect-feed"),
                 asyncio.create_task(self._infer_batches(decoded, inferred),
                                     name="detect-infer"),
                 asyncio.create_task(self._store_batches(inferred), name="detect-store"))
        try:
            done, _ = await asyncio.wait(steps, return_when=asyncio.FIRST_EXCEPTION)
            for step in done:
                step.result()  # a step's failure is the stage's
        finally:
            for step in steps:
                step.cancel()  # the storing step finishes the batch in hand first
            try:
                await asyncio.gather(*steps, return_exceptions=True)
            finally:  # jobs still in hand (a crash, or SIGTERM's grace run out) go back
                self._helpers = None
                helpers.shutdown(wait=False)
                await self._queue.return_in_flight()

    async def _feed(self, decoded: asyncio.Queue[_Batch | None]) -> None:
        """Take batches and decode them while the previous one is inferred: a batch is
        taken only once the inferring step took the one before, so one batch at most
        waits decoded. A suspect is taken when nothing else is in flight, and nothing
        is taken after it until it is stored: should it kill the daemon again, no other
        job is blamed with it. Ends (passing None on) once `stopping` is set."""
        last: _Batch | None = None
        while not self._stopping.is_set():
            honour_cancellation()
            size = self._config.detector.batch_size
            if await self._suspect_waiting():
                if last is not None:
                    await last.stored.wait()
                size = 1
            tasks = await self._take_and_decode(size)
            if not tasks:
                continue
            last = _Batch(tasks)
            await decoded.put(last)
            await decoded.join()  # taken by the inferring step
            if any(task.suspect for task in tasks):
                await last.stored.wait()
        await decoded.put(None)

    async def _infer_batches(self, decoded: asyncio.Queue[_Batch | None],
                             inferred: asyncio.Queue[_Batch | None]) -> None:
        """Infer each batch while the ones before it are stored (two at most wait)."""
        while True:
            batch = await decoded.get()
            decoded.task_done()
            if batch is not None:
                await self._infer(batch.tasks)
            await inferred.put(batch)
            if batch is None:
                return

    async def _store_batches(self, inferred: asyncio.Queue[_Batch | None]) -> None:
        """Store each batch, in the order taken, so a camera's images are stored in the
        order they arrived. Cancelled, the batch in hand is finished first."""
        while (batch := await inferred.get()) is not None:
            storing = asyncio.create_task(self._store_all(batch.tasks))
            try:
                await asyncio.shield(storing)
            except asyncio.CancelledError:
                await storing
                raise
            finally:
                batch.stored.set()

    async def _take_and_decode(self, size: int) -> list[ImageTask]:
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
        await asyncio.gather(*(self._in_helper(read_and_decode, t, roots, limit, self._clock)
                               for t in tasks if t.error is None))
        return tasks

    async def _in_helper(self, func: Callable[..., T], /, *args: Any) -> T:
        """Run blocking pre- and post-processing (decoding, thumbnails) in the worker's
        helper threads, with the caller's context (as asyncio.to_thread does)."""
        if self._helpers is None:  # outside run() (a test calling a step directly)
            return await asyncio.to_thread(func, *args)
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._helpers, functools.partial(context.run, func, *args))

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
        return is_suspect(Job(self._queue.name, as_bytes(raw), item))

    async def _infer(self, tasks: list[ImageTask]) -> None:
        """Infer the decoded images: together, except each suspect in a call of its own."""
        ready = [t for t in tasks if t.image is not None]
        innocent = [t for t in ready if not t.suspect]
        for group in ([innocent] if innocent else []) + [[t] for t in ready if t.suspect]:
            started = time.perf_counter()
            results = await asyncio.to_thread(
                self._detector.infer, [t.image for t in group if t.image is not None])
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
                    self._queue, task.job, lambda _job, t=task: self._store(t),  # type: ignore[misc]  # mypy cannot infer a lambda with a default
                    self._config.queues)
        await self._recognise(tasks)

    async def _recognise(self, tasks: list[ImageTask]) -> None:
        """Entities of the images' new person and vehicle detections, once all of them are
        batched: best effort, it never raises (pipeline/recognizer.py)."""
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
        with metrics.STAGE_LATENCY.labels("thumbnails").time():
            thumbnails = await self._in_helper(self._write_thumbnails, task, detected_at)
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
            stored = await self._insert(conn, task, detected_at, thumbnails)
            await record(conn, task.upload, str(task.path), task.camera_id,
                         [row.id for row in stored])
            return stored, True

    async def _insert(self, conn: asyncpg.Connection, task: ImageTask, detected_at: datetime,
                      thumbnails: list[Path | None]) -> list[StoredDetection]:
        """The image's detection rows, in `found`'s order, one round trip for all."""
        assert task.image is not None and task.upload is not None
        found = task.found or []
        if not found:
            return []
        paths = [None if thumb is None else str(thumb) for thumb in thumbnails]
        captured_at = task.capture.at if task.capture else None
        rows = await conn.fetch(
            INSERT_DETECTIONS, task.camera_id, task.upload.image_path, task.image.mime,
            detected_at, captured_at, [f.object_type for f in found],
            [f.confidence for f in found], [f.bbox_x for f in found], [f.bbox_y for f in found],
            [f.bbox_width for f in found], [f.bbox_height for f in found], paths)
        ids = sorted(row["id"] for row in rows)
        return [StoredDetection(detection_id, f.object_type, f.confidence, detected_at, path,
                                captured_at)
                for detection_id, f, path in zip(ids, found, paths, strict=True)]

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
                        stored: list[StoredDetection]) -> None:
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
