"""Capture time: EXIF, file and folder names of the common cameras, mtime, plausibility; and
a night backlog uploaded in the morning becoming a night event that a night rule alerts on."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePath
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import seed_default_prompt
from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline.analyze_worker import AnalyzeWorker
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.capture_time import CaptureClock, arrival_time, name_time
from hsid.pipeline.detect_worker import DetectWorker
from hsid.pipeline.detector import Detector
from hsid.pipeline.exif import exif_date
from hsid.pipeline.sweeper import BatchSweeper
from tests.pipeline.samples import jpeg, png, snapshot
from tests.support import eventually

BERLIN = ZoneInfo("Europe/Berlin")
ROOT = Path("/srv/cameras")


# --- Building EXIF the way cameras write it --------------------------------------------------

def tiff(date_time: str | None = "2025:12:23 02:13:40", offset: str | None = None,
         subsec: str | None = None, ifd0_date: str | None = None, order: str = "<") -> bytes:
    """A TIFF block: IFD0 (DateTime, the Exif IFD pointer) and the Exif IFD (DateTimeOriginal,
    OffsetTimeOriginal, SubSecTimeOriginal), ASCII values stored after the IFDs."""
    exif_tags = [(0x9003, date_time), (0x9011, offset), (0x9291, subsec)]
    exif_entries = [(tag, value) for tag, value in exif_tags if value is not None]
    ifd0_entries = [(0x0132, ifd0_date)] if ifd0_date else []
    ifd0_at = 8
    exif_at = ifd0_at + 2 + 12 * (len(ifd0_entries) + 1) + 4
    data_at = exif_at + 2 + 12 * len(exif_entries) + 4
    blob = bytearray()

    def ascii_entry(tag: int, text: str) -> bytes:
        raw = text.encode() + b"\x00"
        if len(raw) <= 4:
            return struct.pack(order + "HHI", tag, 2, len(raw)) + raw.ljust(4, b"\x00")
        where = data_at + len(blob)
        blob.extend(raw)
        return struct.pack(order + "HHII", tag, 2, len(raw), where)

    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, ifd0_at)
    ifd0 = struct.pack(order + "H", len(ifd0_entries) + 1)
    ifd0 += b"".join(ascii_entry(tag, value) for tag, value in ifd0_entries)
    ifd0 += struct.pack(order + "HHII", 0x8769, 4, 1, exif_at) + b"\x00" * 4
    exif = struct.pack(order + "H", len(exif_entries))
    exif += b"".join(ascii_entry(tag, value) for tag, value in exif_entries) + b"\x00" * 4
    return head + ifd0 + exif + bytes(blob)


def with_exif(image: bytes, block: bytes) -> bytes:
    """The JPEG with an APP1 Exif segment right after its SOI, as cameras write it."""
    segment = b"Exif\x00\x00" + block
    return image[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + image[2:]


def png_with_exif(image: bytes, block: bytes) -> bytes:
    """The PNG with an eXIf chunk after its IHDR (CRC not checked by readers of it)."""
    ihdr_end = 8 + 8 + 13 + 4
    chunk = struct.pack(">I", len(block)) + b"eXIf" + block + b"\x00" * 4
    return image[:ihdr_end] + chunk + image[ihdr_end:]


def clock(zone: ZoneInfo = BERLIN, hours: float = 72.0) -> CaptureClock:
    return CaptureClock(zone, ROOT, hours)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


ARRIVAL = berlin(2025, 12, 23, 9, 40)


# --- EXIF ------------------------------------------------------------------------------------

def test_exif_date_time_original_is_read_in_the_site_zone_without_an_offset() -> None:
    data = with_exif(jpeg(1), tiff("2025:12:23 02:13:40"))
    found = clock().capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    assert (found.at, found.source) == (berlin(2025, 12, 23, 2, 13, 40), "exif")


def test_exif_offset_time_original_and_subseconds_are_honoured() -> None:
    data = with_exif(jpeg(2), tiff("2025:12:23 02:13:40", offset="-05:00", subsec="25",
                                   order=">"))
    found = clock().capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    assert found.at == datetime(2025, 12, 23, 7, 13, 40, 250000, tzinfo=UTC)


def test_ifd0_date_time_is_the_last_resort_and_png_exif_is_read() -> None:
    only_ifd0 = with_exif(jpeg(3), tiff(None, ifd0_date="2025:12:23 03:00:00"))
    assert exif_date(only_ifd0).tag == "DateTime"
    picture = png_with_exif(png(4), tiff("2025:12:23 04:05:06"))
    found = clock().capture(picture, ROOT / "porch" / "snap.png", None, ARRIVAL)
    assert (found.at, found.source) == (berlin(2025, 12, 23, 4, 5, 6), "exif")


@pytest.mark.parametrize("damage", [
    lambda block: block[:12],  # cut short
    lambda block: b"XX" + block[2:],  # no byte order
    lambda block: block[:8] + b"\xff\xff" + block[10:],  # 65535 entries claimed
    lambda block: block.replace(b"2025:12:23 02:13:40", b"0000:00:00 00:00:00"),  # unset clock
])
def test_broken_exif_is_no_capture_time_and_never_an_error(damage) -> None:
    data = with_exif(jpeg(5), damage(tiff()))
    found = clock().found(data, ROOT / "porch" / "snap.jpg", None)
    assert found is None


def test_exif_values_out_of_range_are_ignored_not_raised() -> None:
    bad_offset = with_exif(jpeg(13), tiff("2025:12:23 02:13:40", offset="+99:99"))
    assert clock().found(bad_offset, ROOT / "porch" / "a.jpg", None).at == berlin(
        2025, 12, 23, 2, 13, 40)  # read in the site's zone instead
    end_of_time = with_exif(jpeg(14), tiff("9999:12:31 23:59:59", offset="-05:00"))
    assert clock().found(end_of_time, ROOT / "porch" / "a.jpg", None) is None


# --- Names -----------------------------------------------------------------------------------

NAMES = {
    # generic
    "porch/snap_20251223_021340.jpg": (2, 13, 40, 0),
    "porch/20251223021340.jpg": (2, 13, 40, 0),
    # Hikvision: <ip>_<channel>_<YYYYMMDDHHMMSSmmm>_<event>.jpg
    "porch/192.168.1.64_01_20251223021340123_MOTION_DETECTION.jpg": (2, 13, 40, 123000),
    "porch/10.4.100.111_01_20251223021340383_TIMING.jpg": (2, 13, 40, 383000),
    # Dahua and Amcrest: <serial>/<date>/<channel>/jpg/<HH>/<MM>/<SS>[M][0@0][0].jpg
    "porch/AMC0028V_795UUB/2025-12-23/001/jpg/02/13/40[M][0@0][0].jpg": (2, 13, 40, 0),
    "porch/2025-12-23/001/jpg/02/13.40[M][0@0][0].jpg": (2, 13, 40, 0),
    # Lorex (Dahua inside): <date>/pic_001/<HH.MM.SS>[R][0@0][0].jpg
    "porch/2025-12-23/pic_001/02.13.40[R][0@0][0].jpg": (2, 13, 40, 0),
    # Reolink: <name>_<channel>_<YYYYMMDDHHMMSS>.jpg, in YYYY/MM/DD folders
    "porch/2025/12/23/Porch_00_20251223021340.jpg": (2, 13, 40, 0),
    # Foscam: MDAlarm_ / Schedule_ <YYYYMMDD-HHMMSS>.jpg
    "porch/MDAlarm_20251223-021340.jpg": (2, 13, 40, 0),
    "porch/Schedule_20251223-021340.jpg": (2, 13, 40, 0),
    # date and hour folders: YYYY-MM-DD/HH/...
    "porch/2025-12-23/02/snap.jpg": (2, 0, 0, 0),
    "porch/2025-12-23/02/13-40.jpg": (2, 13, 40, 0),
    "porch/20251223/02/image.jpg": (2, 0, 0, 0),
    # Geovision and motionEye-style dashed stamps
    "porch/MOTION_2025-12-23-02-13-40-123_001.jpg": (2, 13, 40, 123000),
    "porch/2025-12-23/02-13-40.jpg": (2, 13, 40, 0),
}


@pytest.mark.parametrize("path", sorted(NAMES))
def test_file_and_folder_names_of_the_common_cameras(path: str) -> None:
    hour, minute, second, micro = NAMES[path]
    found = name_time(PurePath(path), BERLIN)
    assert found is not None
    assert found.at == berlin(2025, 12, 23, hour, minute, second, micro)


@pytest.mark.parametrize("path", [
    "porch/snap.jpg", "porch/2025-12-23/snap.jpg", "porch/2025-12-23/01.jpg",
    "porch/20251323021340.jpg",  # month 13
    "porch/IMG_123456789012345678.jpg",  # a counter, not a date
])
def test_names_without_a_timestamp_give_none(path: str) -> None:
    assert name_time(PurePath(path), BERLIN) is None


def test_exif_comes_before_the_name_and_the_name_before_the_mtime() -> None:
    path = ROOT / "porch" / "MDAlarm_20251223-031500.jpg"
    mtime_ns = int(ARRIVAL.timestamp() * 1e9)
    both = clock().capture(with_exif(jpeg(6), tiff()), path, mtime_ns, ARRIVAL)
    named = clock().capture(jpeg(6), path, mtime_ns, ARRIVAL)
    plain = clock().capture(jpeg(6), ROOT / "porch" / "snap.jpg", mtime_ns - 5 * 10**9, ARRIVAL)
    assert (both.source, named.source, plain.source) == ("exif", "file_name", "mtime")
    assert named.at == berlin(2025, 12, 23, 3, 15)
    assert plain.at == ARRIVAL - timedelta(seconds=5)


def test_the_camera_root_is_not_read_for_dates() -> None:
    root = Path("/srv/2025-12-23")
    found = CaptureClock(BERLIN, root, 72).capture(jpeg(7), root / "porch" / "02" / "a.jpg",
                                                   None, ARRIVAL)
    assert found.source == "arrival"


# --- Plausibility ----------------------------------------------------------------------------

def test_a_capture_time_in_the_future_gives_the_arrival_time_and_says_why() -> None:
    data = with_exif(jpeg(8), tiff("2025:12:23 11:40:00"))  # two hours after arrival
    with capture_logs() as logs:
        found = clock().capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    assert (found.at, found.source) == (ARRIVAL, "arrival")
    [line] = [e for e in logs if e["event"] == "capture_time_rejected"]
    assert line["log_level"] == "warning" and line["source"] == "exif"
    assert "in the future" in line["reason"] and line["action"] == "the arrival time is used"


def test_a_capture_time_older_than_max_backlog_hours_gives_the_arrival_time() -> None:
    data = with_exif(jpeg(9), tiff("2025:12:19 09:39:00"))  # 96 hours before arrival
    with capture_logs() as logs:
        found = clock(hours=72).capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
        kept = clock(hours=100).capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    assert (found.at, found.source) == (ARRIVAL, "arrival")
    assert kept.source == "exif"
    [line] = [e for e in logs if e["event"] == "capture_time_rejected"]
    assert "watcher.max_backlog_hours (72 h)" in line["reason"]


def test_a_slightly_fast_camera_clock_is_capped_at_the_arrival() -> None:
    data = with_exif(jpeg(10), tiff("2025:12:23 09:41:00"))  # a minute ahead
    found = clock().capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    assert (found.at, found.source) == (ARRIVAL, "exif")


def test_a_camera_with_a_wrong_clock_warns_once_then_logs_info() -> None:
    watch = clock()
    data = with_exif(jpeg(11), tiff("2030:01:01 00:00:00"))
    with capture_logs() as logs:
        for _ in range(3):
            watch.capture(data, ROOT / "porch" / "snap.jpg", None, ARRIVAL)
    levels = [e["log_level"] for e in logs if e["event"] == "capture_time_rejected"]
    assert levels == ["warning", "info", "info"]


def test_the_queue_items_timestamp_is_the_arrival() -> None:
    default = datetime(2000, 1, 1, tzinfo=UTC)
    assert arrival_time("2025-12-23T08:40:00.000000", default) == berlin(2025, 12, 23, 9, 40)
    assert arrival_time("2025-12-23T08:40:00+00:00", default) == berlin(2025, 12, 23, 9, 40)
    assert arrival_time(None, default) == arrival_time("garbage", default) == default


# --- A night backlog uploaded in the morning -------------------------------------------------

CAMERA = "back_door"
RED = (0, 0, 255)  # BGR: the tiny detector's person at 0.95
SUNDAY_MORNING = berlin(2025, 11, 23, 9, 40)  # a Sunday
NIGHT_RULE = {"start": "22:00", "end": "06:00"}  # no timezone: the site's


@pytest.fixture
def night_config(config: Config, tmp_path: Path) -> Config:
    model = write_tiny_detector(tmp_path / "tiny.onnx")
    return config.with_overrides({
        "site": {"timezone": "Europe/Berlin"},
        "detector": {"model": str(model)},
        "batch": {"fast_path_enabled": False, "idle_seconds": 0.5, "window_seconds": 90,
                  "sweep_interval_seconds": 0.1},
        "queues": {"retry_base_seconds": 0.01},
    })


@pytest.fixture
async def pipeline(night_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                   keyspace: Keyspace, camera_root: Path) -> AsyncIterator[ReliableQueue]:
    """Detect worker, batch sweeper and analyze worker (rules), as the daemon runs them."""
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, 'Back Door', $2)",
                     CAMERA, str(camera_root / CAMERA))
    await db.execute("INSERT INTO alert_rules (name, severity, object_types, schedule) "
                     "VALUES ('person at night', 'high', $1, $2)", ["person"], NIGHT_RULE)
    await seed_default_prompt(db)
    detector = Detector(night_config.detector, night_config.paths.state_dir / "engines")
    await asyncio.to_thread(detector.load)
    scorer = RiskScorer(night_config.analyzer)
    await scorer.load()
    detections = ReliableQueue(redis, "detection_queue", "test-detect", night_config.queues,
                               keyspace=keyspace)
    analyses = ReliableQueue(redis, "analysis_queue", "test-analyze", night_config.queues,
                             keyspace=keyspace)
    batcher = Batcher(night_config.batch, redis, keyspace)
    stopping = asyncio.Event()
    context = StageContext(night_config, db, redis, keyspace, stopping=stopping)
    tasks = [asyncio.create_task(stage.run()) for stage in (
        DetectWorker(context, detections, detector, batcher),
        BatchSweeper(context, batcher),
        AnalyzeWorker(context, analyses, scorer),
    )]
    yield detections
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


def _upload(camera_root: Path, name: str, taken: datetime | None, seed: int) -> Path:
    """A snapshot of a person, its EXIF DateTimeOriginal `taken` (Berlin wall clock, as the
    camera writes it), its mtime the morning it was uploaded."""
    folder = camera_root / CAMERA
    folder.mkdir(exist_ok=True)
    path = snapshot(folder / name, [((100 + seed, 100, 400, 500), RED)], size=(960, 540))
    if taken is not None:
        local = taken.astimezone(BERLIN)
        block = tiff(local.strftime("%Y:%m:%d %H:%M:%S"), subsec=f"{local.microsecond:06d}")
        path.write_bytes(with_exif(path.read_bytes(), block))
    os.utime(path, (SUNDAY_MORNING.timestamp(),) * 2)
    return path


def _item(path: Path, arrived: datetime) -> dict[str, str]:
    return {"camera_id": CAMERA, "file_path": str(path),
            "timestamp": arrived.astimezone(UTC).replace(tzinfo=None).isoformat()}


async def test_a_night_snapshot_uploaded_in_the_morning_is_a_night_event_and_alerts(
    pipeline: ReliableQueue, db: asyncpg.Pool, camera_root: Path,
) -> None:
    night = berlin(2025, 11, 23, 2, 13)
    later = night + timedelta(seconds=0.4)  # within batch.idle_seconds (0.5 s in this test)
    for n, taken in enumerate((night, later)):  # two snapshots of one visit
        await pipeline.push(_item(_upload(camera_root, f"snap{n}.jpg", taken, n),
                                  SUNDAY_MORNING))

    event = await eventually(lambda: db.fetchrow("SELECT * FROM events"), within=30,
                             what="the backlog's event")

    captured = await db.fetch("SELECT captured_at, detected_at FROM detections ORDER BY id")
    assert [row["captured_at"] for row in captured] == [night, later]
    assert all(row["detected_at"] > SUNDAY_MORNING for row in captured)  # processing time
    assert len(json.loads(event["detection_ids"])) == 2
    assert (event["started_at"], event["ended_at"]) == (night, later)
    assert "at night (Sun 02:13)" in event["summary"]
    assert "Night time multiplied it by 1.5" in event["reasoning"]
    # A person at 0.95 (49) times 1.5 at night is 73, and 5 for the second snapshot; in the
    # morning it would have been 54, medium.
    assert (event["risk_score"], event["risk_level"]) == (78, "high")
    alert = await eventually(lambda: db.fetchrow("SELECT * FROM alerts"), what="the alert")
    assert alert["event_id"] == event["id"]
    assert alert["metadata"]["rule_name"] == "person at night"


async def test_a_backlog_joins_no_live_batch_and_hours_apart_are_separate_events(
    pipeline: ReliableQueue, db: asyncpg.Pool, camera_root: Path,
) -> None:
    now = datetime.now(UTC)
    live = _upload(camera_root, "live.jpg", None, 0)
    os.utime(live, (now.timestamp(),) * 2)
    await pipeline.push(_item(live, now))
    seven_hours_ago = now - timedelta(hours=7)
    for n, taken in enumerate((seven_hours_ago, seven_hours_ago + timedelta(seconds=0.3),
                               now - timedelta(hours=4))):
        await pipeline.push(_item(_upload(camera_root, f"old{n}.jpg", taken, n + 1), now))

    events = await eventually(lambda: _events_when(db, 3), within=30, what="three events")

    by_file = {row["id"]: row["file_path"] for row in await db.fetch(
        "SELECT id, file_path FROM detections")}
    groups = sorted(sorted(Path(by_file[i]).name for i in json.loads(e["detection_ids"]))
                    for e in events)
    assert groups == [["live.jpg"], ["old0.jpg", "old1.jpg"], ["old2.jpg"]]


async def _events_when(db: asyncpg.Pool, count: int) -> list[asyncpg.Record] | None:
    rows = await db.fetch("SELECT * FROM events ORDER BY started_at")
    return rows if len(rows) >= count else None


def test_naive_exif_times_follow_the_site_zone() -> None:
    data = with_exif(jpeg(12), tiff("2025:12:23 02:13:40"))
    tokyo = CaptureClock(ZoneInfo("Asia/Tokyo"), ROOT, 72).capture(
        data, ROOT / "porch" / "a.jpg", None, ARRIVAL)
    assert tokyo.at == datetime(2025, 12, 23, 2, 13, 40, tzinfo=timezone(timedelta(hours=9)))
