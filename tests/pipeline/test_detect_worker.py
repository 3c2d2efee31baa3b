"""Detect worker with the tiny model: rows, thumbnails, publishing, batching, bad files."""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import cv2
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core import metrics
from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.detect_worker import DetectWorker
from hsid.pipeline.detector import DecodedImage, Detector, ObjectDetection
from tests.pipeline.samples import snapshot
from tests.support import eventually

CAMERA = "front_door"
RED = (0, 0, 255)  # BGR
BLUE = (255, 0, 0)


def item(path: Path, camera: str = CAMERA) -> dict[str, str]:
    return {"camera_id": camera, "file_path": str(path),
            "timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat()}


@pytest.fixture
def worker_config(config: Config, tmp_path: Path) -> Config:
    model = write_tiny_detector(tmp_path / "tiny.onnx")
    return config.with_overrides({
        "detector": {"model": str(model), "batch_size": 2},
        "queues": {"retry_base_seconds": 0.01},
    })


@pytest.fixture
async def camera(db: asyncpg.Pool, camera_root: Path) -> Path:
    folder = camera_root / CAMERA
    folder.mkdir()
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, $2, $3)",
                     CAMERA, "Front Door", str(folder))
    return folder


@pytest.fixture
async def running_worker(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
) -> AsyncIterator[ReliableQueue]:
    detector = Detector(worker_config.detector, worker_config.paths.state_dir / "engines")
    await asyncio.to_thread(detector.load)
    queue = ReliableQueue(redis, "detection_queue", "test-detect", worker_config.queues,
                          keyspace=keyspace)
    stopping = asyncio.Event()
    worker = DetectWorker(StageContext(worker_config, db, redis, keyspace, stopping=stopping),
                          queue, detector, Batcher(worker_config.batch, redis, keyspace))
    task = asyncio.create_task(worker.run())
    yield queue
    stopping.set()
    await asyncio.wait_for(task, 10)


async def test_detections_are_stored_with_boxes_in_original_pixels_and_thumbnails(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
    worker_config: Config,
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keyspace.channel("security_events"))
    image = snapshot(camera / "snap 1.jpg", [((100, 200, 300, 600), RED),
                                             ((1200, 500, 1700, 800), BLUE)])
    await running_worker.push(item(image))
    rows = await eventually(lambda: db.fetch("SELECT * FROM detections ORDER BY confidence DESC"))
    person, car = rows
    assert (person["object_type"], person["confidence"]) == ("person", pytest.approx(0.95))
    assert (car["object_type"], car["confidence"]) == ("car", pytest.approx(0.6))
    for row, (x, y, w, h) in ((person, (100, 200, 200, 400)), (car, (1200, 500, 500, 300))):
        box = (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"])
        assert box == pytest.approx((x, y, w, h), abs=4)
        assert row["file_path"] == str(image)
        assert row["file_type"] == "image/jpeg"
        thumb = Path(row["thumbnail_path"])
        assert thumb.is_relative_to(worker_config.paths.state_dir / "thumbnails" / CAMERA)
        crop = cv2.imread(str(thumb))
        assert crop is not None and max(crop.shape[:2]) <= worker_config.detector.thumbnail_size
    message = await eventually(lambda: pubsub.get_message(ignore_subscribe_messages=True,
                                                          timeout=0.1))
    published = json.loads(message["data"])
    assert published["type"] == "detection"
    assert published["data"]["camera_id"] == CAMERA
    assert {d["id"] for d in published["data"]["detections"]} == {person["id"], car["id"]}
    # The person (0.95) opens an episode: the whole snapshot, car too, takes the fast path.
    analysis_queue = keyspace.queue("analysis_queue")
    [fast] = [json.loads(raw) for raw in await redis.lrange(analysis_queue, 0, -1)]
    assert sorted(fast["detection_ids"]) == sorted([person["id"], car["id"]])
    assert fast["fast_path"] is True
    assert await redis.get(keyspace.batch_current(CAMERA)) is None
    await pubsub.aclose()


async def test_a_job_processed_twice_inserts_once(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, camera: Path,
) -> None:
    image = snapshot(camera / "a.jpg", [((10, 10, 200, 200), BLUE)])
    await running_worker.push(item(image))
    await eventually(lambda: db.fetchval("SELECT count(*) FROM detections"))
    await running_worker.push(item(image))
    # The same bytes under another name are the same snapshot: not stored again either.
    same = camera / "copy-of-a.jpg"
    same.write_bytes(image.read_bytes())
    await running_worker.push(item(same))
    second = snapshot(camera / "b.jpg", [((20, 20, 220, 220), BLUE)])
    await running_worker.push(item(second))
    await eventually(lambda: db.fetchval(
        "SELECT count(*) FROM detections WHERE file_path = $1", str(second)))
    assert await db.fetchval("SELECT count(*) FROM detections WHERE file_path = $1",
                             str(image)) == 1
    assert await db.fetchval("SELECT count(*) FROM detections") == 2


async def test_bad_images_go_to_the_dlq_with_a_reason_and_the_worker_carries_on(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    good = snapshot(camera / "good.jpg", [((50, 50, 400, 400), RED)])
    truncated = camera / "truncated.jpg"  # cut inside its header: nothing to decode
    truncated.write_bytes(good.read_bytes()[:100])
    (camera / "empty.jpg").write_bytes(b"")
    (camera / "text.jpg").write_text("this is not an image\n")
    bomb = camera / "bomb.png"  # a PNG header declaring 30000 x 30000 pixels
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (30000).to_bytes(4, "big") * 2
                     + b"\x08\x02\x00\x00\x00" + b"\x00" * 64)
    bad = ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "missing.jpg"]
    for name in bad:
        await running_worker.push(item(camera / name))
    await running_worker.push(item(good))
    await eventually(lambda: db.fetchval("SELECT count(*) FROM detections"))
    entries = await eventually(lambda: _dlq_when(redis, keyspace, len(bad)))
    by_file = {Path(e["original_job"]["file_path"]).name: e for e in entries}
    assert set(by_file) == set(bad)
    for entry in entries:
        assert entry["queue_name"] == "detection_queue"
        assert entry["attempt_count"] == 1  # permanent: no pointless retries
        assert entry["error"]
    assert "pixels" in by_file["bomb.png"]["error"]
    assert "no longer exists" in by_file["missing.jpg"]["error"]
    # Recorded, so that no restart waits on (or queues) the same broken files again.
    recorded = {Path(r["file_path"]).name: r for r in await db.fetch(
        "SELECT * FROM snapshots WHERE outcome = 'dead_lettered'")}
    assert set(recorded) == set(bad) - {"missing.jpg"}
    assert recorded["bomb.png"]["reason"] == by_file["bomb.png"]["error"]


async def test_upload_cut_short_is_decoded_as_far_as_it_goes_and_stored(
    running_worker: ReliableQueue, db: asyncpg.Pool, camera: Path,
) -> None:
    whole = snapshot(camera / "whole.jpg", [((100, 100, 500, 300), RED)])
    cut = camera / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) * 2 // 3])
    with capture_logs() as logs:
        await running_worker.push(item(cut))
        [row] = await eventually(lambda: db.fetch("SELECT * FROM detections"))
    assert (row["file_path"], row["object_type"]) == (str(cut), "person")
    assert any(e["event"] == "image_truncated" and e["log_level"] == "warning" for e in logs)


async def test_upload_overwritten_before_it_was_read_is_dead_lettered_by_its_content(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    path = snapshot(camera / "snapshot.jpg", [((100, 100, 500, 300), RED)])
    stale = {"sha256": "0" * 64, "image_path": str(path), "size": 1, "mtime_ns": 1}
    await running_worker.push({**item(path), **stale})
    [entry] = await eventually(lambda: _dlq_when(redis, keyspace, 1))
    assert "overwritten before it could be read" in entry["error"]
    assert "0" * 64 in entry["error"]
    assert await db.fetchval("SELECT count(*) FROM detections") == 0


async def test_malformed_item_is_dead_lettered_with_its_reason_and_the_worker_carries_on(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    good = snapshot(camera / "after.jpg", [((50, 50, 400, 400), RED)])
    await redis.rpush(keyspace.queue("detection_queue"), '{"file_path": "/cams/x.jpg"}')
    await running_worker.push(item(good))
    [entry] = await eventually(lambda: _dlq_when(redis, keyspace, 1))
    assert entry["error"] == "malformed queue item: camera_id: Field required"
    assert entry["original_job"] == {"file_path": "/cams/x.jpg"}
    assert await eventually(lambda: db.fetchval("SELECT count(*) FROM detections")) == 1


async def _dlq_when(redis: aioredis.Redis, keyspace: Keyspace, count: int) -> list[dict] | None:
    raws = await redis.lrange(keyspace.dlq("detection_queue"), 0, -1)
    return [json.loads(r) for r in raws] if len(raws) >= count else None


async def test_failed_transaction_removes_its_thumbnails(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
    worker_config: Config,
) -> None:
    folder = camera_root / "unregistered"  # no cameras row: the foreign key refuses the rows
    folder.mkdir()
    image = snapshot(folder / "x.jpg", [((50, 50, 400, 400), RED)])
    await running_worker.push(item(image, camera="unregistered"))
    [entry] = await eventually(lambda: _dlq_when(redis, keyspace, 1))
    assert entry["attempt_count"] == worker_config.queues.max_attempts
    thumbs = worker_config.paths.state_dir / "thumbnails"
    assert not thumbs.exists() or not [p for p in thumbs.rglob("*") if p.is_file()]
    assert await db.fetchval("SELECT count(*) FROM detections") == 0


async def _rows_when(db: asyncpg.Pool, count: int) -> list[asyncpg.Record] | None:
    rows = await db.fetch("SELECT * FROM detections ORDER BY id")
    return rows if len(rows) >= count else None


async def test_a_retried_job_batches_its_stored_detections_that_no_event_holds(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    image = snapshot(camera / "retried.jpg", [((100, 200, 300, 600), RED),
                                              ((1200, 500, 1700, 800), BLUE)])
    await running_worker.push(item(image))
    rows = await eventually(lambda: _rows_when(db, 2))
    person, car = sorted(rows, key=lambda row: -row["confidence"])
    # As if the first run had died between commit and batching; the person was analysed
    # (an event spans its detections' capture times).
    await redis.flushdb()
    await db.execute("INSERT INTO events (batch_id, camera_id, started_at, ended_at, "
                     "detection_ids) VALUES ('done', $1, $2, $2, $3)",
                     CAMERA, person["captured_at"], json.dumps([person["id"]]))
    with capture_logs() as logs:
        await running_worker.push(item(image))
        [stored] = await eventually(
            lambda: [e for e in logs if e["event"] == "detections_already_stored"])
    assert stored["rebatched"] == 1
    batch_id = (await redis.get(keyspace.batch_current(CAMERA))).decode()
    assert json.loads(await redis.get(keyspace.batch(CAMERA, batch_id)[2])) == [car["id"]]
    assert await redis.lrange(keyspace.queue("analysis_queue"), 0, -1) == []  # not the person
    assert await db.fetchval("SELECT count(*) FROM detections") == 2
    assert await asyncio.to_thread(Path(car["thumbnail_path"]).is_file)  # kept by the retry


@pytest.fixture
def full_state_dir(worker_config: Config) -> Iterator[Path]:
    """The state dir as a tiny tmpfs filled to the last byte (`filler`); unmounted after."""
    path = worker_config.paths.state_dir
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                                 capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command to put a tiny tmpfs under the state dir")
    if mounted.returncode != 0:
        pytest.skip("mounting a tiny tmpfs as the state dir needs root (CAP_SYS_ADMIN): "
                    + mounted.stderr.strip())
    try:
        with open(path / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


def _files(folder: Path) -> list[str]:
    """The files under `folder`, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def test_a_full_disk_stores_detections_without_thumbnails_until_space_returns(
    running_worker: ReliableQueue, db: asyncpg.Pool, camera: Path, full_state_dir: Path,
) -> None:
    sample, labels = "hsid_state_files_not_written_total", {"kind": "thumbnails"}
    before = metrics.REGISTRY.get_sample_value(sample, labels) or 0
    with capture_logs() as logs:
        for n, name in enumerate(("full-1.jpg", "full-2.jpg")):
            patches = [((100 + 50 * n, 200, 300 + 50 * n, 600), RED),
                       ((1200, 500, 1700, 800), BLUE)]
            await running_worker.push(item(snapshot(camera / name, patches)))
        rows = await eventually(lambda: _rows_when(db, 4))
        assert [row["thumbnail_path"] for row in rows] == [None] * 4
        assert metrics.REGISTRY.get_sample_value(sample, labels) == before + 4
        # Nothing half-written is left behind.
        assert _files(full_state_dir) == ["filler"]

        (full_state_dir / "filler").unlink()  # the user makes room
        roomy = [((700, 200, 900, 600), RED), ((1200, 500, 1700, 800), BLUE)]
        await running_worker.push(item(snapshot(camera / "roomy.jpg", roomy)))
        rows = await eventually(lambda: _rows_when(db, 6))
    thumbnails = [Path(row["thumbnail_path"]) for row in rows[4:]]
    assert sorted(thumbnails) == [full_state_dir / name for name in _files(full_state_dir)]
    [unwritable] = [e for e in logs if e["event"] == "thumbnails_unwritable"]
    assert unwritable["log_level"] == "error"
    assert "No space left" in unwritable["error"]
    assert unwritable["path"].startswith(str(full_state_dir))
    [again] = [e for e in logs if e["event"] == "thumbnails_writable_again"]
    assert again["log_level"] == "info"


async def test_a_job_that_crashed_the_daemon_twice_goes_to_the_dlq_undecoded(
    running_worker: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    decodes = ("hsid_stage_seconds_count", {"step": "decode"})
    before = metrics.REGISTRY.get_sample_value(*decodes) or 0
    image = snapshot(camera / "poison.jpg", [((50, 50, 400, 400), RED)])
    await running_worker.push({**item(image), "crash_count": 2})
    [entry] = await eventually(lambda: _dlq_when(redis, keyspace, 1))
    assert entry["error"] == "crashed the daemon twice"
    assert entry["attempt_count"] == 1
    assert entry["original_job"]["file_path"] == str(image)
    assert (metrics.REGISTRY.get_sample_value(*decodes) or 0) == before
    assert await db.fetchval("SELECT count(*) FROM detections") == 0


class CallSizes(Detector):
    """The real detector, noting how many images each call brings."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[int] = []

    def infer(self, images: list[DecodedImage]) -> list[list[ObjectDetection]]:
        self.calls.append(len(images))
        return super().infer(images)


async def test_jobs_in_flight_at_a_crash_are_inferred_alone_and_the_rest_together(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    detector = CallSizes(worker_config.detector, worker_config.paths.state_dir / "engines")
    await asyncio.to_thread(detector.load)
    queue = ReliableQueue(redis, "detection_queue", "test-detect", worker_config.queues,
                          keyspace=keyspace)
    # Queued as recovery leaves them: the jobs in flight at the crash first.
    for n in range(4):
        image = snapshot(camera / f"{n}.jpg", [((10 + 40 * n, 10, 200 + 40 * n, 200), BLUE)])
        await queue.push({**item(image), **({"crash_count": 1} if n < 2 else {})})
    stopping = asyncio.Event()
    task = asyncio.create_task(DetectWorker(
        StageContext(worker_config, db, redis, keyspace, stopping=stopping), queue, detector,
        Batcher(worker_config.batch, redis, keyspace)).run())
    await eventually(lambda: _rows_when(db, 4))
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert detector.calls == [1, 1, 2]  # batch_size 2


# --- The pipeline: decoding, inference and storing of successive batches overlap -------------


class Paced(Detector):
    """The real detector, `delay` s slower a call, so the worker's steps overlap; from call
    `hold_from` on, each call waits for `gate` first (a model stuck in a batch)."""

    def __init__(self, *args: Any, delay: float = 0.05, hold_from: int | None = None) -> None:
        super().__init__(*args)
        self.delay, self.hold_from = delay, hold_from
        self.gate = threading.Event()
        self.calls = 0

    def infer(self, images: list[DecodedImage]) -> list[list[ObjectDetection]]:
        self.calls += 1
        if self.hold_from is not None and self.calls >= self.hold_from:
            self.gate.wait(30)
        time.sleep(self.delay)
        return super().infer(images)


async def _paced_worker(config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                        keyspace: Keyspace, **pace: Any,
                        ) -> tuple[Paced, ReliableQueue, asyncio.Event, DetectWorker]:
    detector = Paced(config.detector, config.paths.state_dir / "engines", **pace)
    await asyncio.to_thread(detector.load)
    queue = ReliableQueue(redis, "detection_queue", "test-detect", config.queues,
                          keyspace=keyspace)
    stopping = asyncio.Event()
    worker = DetectWorker(StageContext(config, db, redis, keyspace, stopping=stopping), queue,
                          detector, Batcher(config.batch, redis, keyspace))
    return detector, queue, stopping, worker


def _car(folder: Path, n: int) -> Path:
    """A snapshot of its own (one car, placed by `n`)."""
    return snapshot(folder / f"{n:02d}.jpg", [((10 + 30 * n, 10, 300 + 30 * n, 300), BLUE)])


async def _stored_paths(db: asyncpg.Pool) -> set[str]:
    return {r["file_path"] for r in await db.fetch(
        "SELECT file_path FROM snapshots WHERE outcome = 'processed'")}


async def test_a_cameras_images_are_stored_in_arrival_order_across_overlapping_batches(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path, camera_root: Path,
) -> None:
    other = camera_root / "back_yard"
    other.mkdir()
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, $1, $2)",
                     "back_yard", str(other))
    config = worker_config.with_overrides({"detector": {"batch_size": 3}})
    _, queue, stopping, worker = await _paced_worker(config, db, redis, keyspace)
    pushed: dict[str, list[str]] = {CAMERA: [], "back_yard": []}
    for n in range(16):  # interleaved, two cameras
        name, folder = (CAMERA, camera) if n % 3 else ("back_yard", other)
        path = _car(folder, n)
        await queue.push(item(path, camera=name))
        pushed[name].append(str(path))
    task = asyncio.create_task(worker.run())
    in_flight = 0
    while len(await _stored_paths(db)) < 16:  # how many jobs the steps hold at once
        in_flight = max(in_flight, int(await redis.llen(queue.processing_key)))
        await asyncio.sleep(0.005)
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert in_flight > 3  # more than one batch of 3 was in hand: the steps overlapped
    for name, paths in pushed.items():
        stored = [r["file_path"] for r in await db.fetch(
            "SELECT file_path FROM detections WHERE camera_id = $1 ORDER BY id", name)]
        assert stored == paths
    assert await redis.llen(queue.processing_key) == 0


@pytest.mark.parametrize("how", ["cancelled", "stopped"])
async def test_jobs_in_the_pipeline_at_a_stop_are_returned_or_finished_never_lost_or_doubled(
    how: str, worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
    keyspace: Keyspace, camera: Path,
) -> None:
    detector, queue, stopping, worker = await _paced_worker(
        worker_config, db, redis, keyspace, hold_from=3)  # batch_size 2
    paths = [str(_car(camera, n)) for n in range(10)]
    for path in paths:
        await queue.push(item(Path(path)))
    task = asyncio.create_task(worker.run())
    # The first two batches go through; the third is stuck in the model while the fourth
    # waits decoded: six jobs in hand at most, two stored at least.
    await eventually(lambda: detector.calls >= 3)
    await eventually(lambda: _stored_when(db, 2))
    await eventually(lambda: _processing_at_least(redis, queue, 4))
    if how == "cancelled":  # a crash of the stage, or SIGTERM's grace run out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        detector.gate.set()
    else:  # SIGTERM: what is in hand is finished, nothing more is taken
        stopping.set()
        detector.gate.set()
        await asyncio.wait_for(task, 10)
    assert await redis.llen(queue.processing_key) == 0
    queued = [json.loads(raw)["file_path"]
              for raw in await redis.lrange(queue.key, 0, -1)]
    stored = await _stored_paths(db)
    assert not stored & set(queued)  # nothing both stored and queued again
    assert sorted(stored | set(queued)) == paths  # nothing lost
    assert queued == [p for p in paths if p not in stored]  # in their order, at the head
    if how == "stopped":
        assert len(stored) >= 8  # the batches in hand were finished, not returned
    # A new run does the rest, each snapshot once.
    _, _, stopping, worker = await _paced_worker(worker_config, db, redis, keyspace)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: _stored_when(db, 10))
    stopping.set()
    await asyncio.wait_for(task, 10)
    counts = await db.fetch("SELECT file_path, count(*) AS n FROM detections GROUP BY file_path")
    assert sorted(r["file_path"] for r in counts) == paths
    assert {r["n"] for r in counts} == {1}
    assert await redis.llen(keyspace.dlq("detection_queue")) == 0


async def _stored_when(db: asyncpg.Pool, count: int) -> set[str] | None:
    stored = await _stored_paths(db)
    return stored if len(stored) >= count else None


async def _processing_at_least(redis: aioredis.Redis, queue: ReliableQueue, count: int) -> bool:
    return int(await redis.llen(queue.processing_key)) >= count


async def test_a_bad_image_amid_a_pipelined_stream_is_dead_lettered_and_the_rest_stored(
    worker_config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera: Path,
) -> None:
    _, queue, stopping, worker = await _paced_worker(worker_config, db, redis, keyspace)
    paths = [_car(camera, n) for n in range(7)]
    bad = camera / "03.jpg"  # the middle one of a batch of two: not an image
    bad.write_text("this is not an image\n")
    for path in paths:
        await queue.push(item(path))
    task = asyncio.create_task(worker.run())
    [entry] = await eventually(lambda: _dlq_when(redis, keyspace, 1))
    await eventually(lambda: _stored_when(db, 6))
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert entry["original_job"]["file_path"] == str(bad)
    assert entry["attempt_count"] == 1 and entry["error"]
    assert await _stored_paths(db) == {str(p) for p in paths if p != bad}
    stored = [r["file_path"] for r in await db.fetch("SELECT file_path FROM detections "
                                                      "ORDER BY id")]
    assert stored == [str(p) for p in paths if p != bad]
    assert await redis.llen(keyspace.dlq("detection_queue")) == 1
    assert await redis.llen(queue.processing_key) == 0
