"""Capture time: when a snapshot was taken, which is not when hsid got it.

A camera that was offline uploads its backlog later; a start-up scan finds what arrived
while hsid was down. Everything that reasons about *when* (night or day, events, alert
schedules, baselines) must use the moment the picture was taken. It is read, in order, from:

1. EXIF DateTimeOriginal, with OffsetTimeOriginal when present (else IFD0 DateTime);
2. a timestamp in the file name, or in a folder name (innermost first): `YYYYMMDD_HHMMSS`,
   `YYYYMMDDHHMMSS` (Reolink `Cam_00_20251223101500.jpg`), `YYYYMMDD-HHMMSS` (Foscam
   `MDAlarm_20251223-101500.jpg`), Hikvision's `<ip>_01_20251223101500123_MOTION_DETECTION.jpg`
   (milliseconds after the seconds), `YYYY-MM-DD-HH-MM-SS` and its `_`, `.`, `@` variants;
3. a date folder with the time below it: `YYYY-MM-DD/HH/…` (the hour; minutes and seconds
   when the folders or the file name go on), Dahua and Amcrest
   `YYYY-MM-DD/001/jpg/HH/MM/SS[M][0@0][0].jpg`, Lorex/Dahua `YYYY-MM-DD/pic_001/HH.MM.SS[R]…`,
   `YYYYMMDD/` and `YYYY/MM/DD/` date folders likewise;
4. the file's mtime (for an FTP upload: when it was written).

Times without an offset (names, EXIF without OffsetTimeOriginal) are the camera's wall
clock, taken to be in the site's time zone. A capture time later than the arrival (beyond
FUTURE_SLACK, for camera clocks a little fast) or more than `watcher.max_backlog_hours`
before it is not believed: the arrival time is used, and a log line says why.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path, PurePath

import structlog

from hsid.pipeline.exif import ExifDate, exif_date

log = structlog.get_logger(__name__)

EXIF, FILE_NAME, FOLDERS, MTIME, ARRIVAL = "exif", "file_name", "folders", "mtime", "arrival"
# A camera clock this much ahead of the server's is only a fast clock: the time is kept
# (capped at the arrival). Beyond it the time is wrong, and the arrival time is used.
FUTURE_SLACK = timedelta(minutes=2)
# The first rejection per camera and reason in this long is a warning, the rest info lines:
# a camera whose clock is wrong would otherwise fill the journal.
WARN_EVERY_SECONDS = 3600.0

# YYYYMMDD HHMMSS with an optional `_`, `-`, `T` or space between, optionally milliseconds
COMPACT = re.compile(
    r"(?<!\d)(?P<Y>(?:19|20)\d\d)(?P<m>\d\d)(?P<d>\d\d)[_\-T ]?"
    r"(?P<H>\d\d)(?P<M>\d\d)(?P<S>\d\d)(?P<ms>\d{3})?(?!\d)")
# YYYY-MM-DD HH-MM-SS with one date separator, one time separator (or none) and optional
# milliseconds: 2025-12-23-10-15-00-123, 2025_12_23_10_15_00, 2025-12-23@101500, 2025.12.23
DASHED = re.compile(
    r"(?<!\d)(?P<Y>(?:19|20)\d\d)(?P<ds>[-_.])(?P<m>\d\d)(?P=ds)(?P<d>\d\d)[_\-T @]?"
    r"(?P<H>\d\d)(?P<ts>[-_.:]?)(?P<M>\d\d)(?P=ts)(?P<S>\d\d)(?:[-_.,]?(?P<ms>\d{3}))?(?!\d)")
DATE_FOLDER = re.compile(r"(?P<Y>(?:19|20)\d\d)([-_.]?)(?P<m>\d\d)\2(?P<d>\d\d)")
TWO_DIGITS = re.compile(r"\d\d")
# The time a file name starts with under a date folder: "42[M]...", "28.47[M]...", "22.03.54"
LEADING_TIME = re.compile(r"(\d\d)(?:[-_.:](\d\d))?(?:[-_.:](\d\d))?(?!\d)")
EXIF_DATE = re.compile(r"(\d{4})[:\-](\d\d)[:\-](\d\d)[ T](\d\d):(\d\d):(\d\d)")
EXIF_OFFSET = re.compile(r"([+-])(\d\d):(\d\d)")


@dataclass(frozen=True, slots=True)
class Capture:
    """When a snapshot was taken (UTC) and where that was read: exif, file_name, folders,
    mtime, or arrival when nothing believable was found."""

    at: datetime
    source: str


class CaptureClock:
    """Reads capture times for one site: its zone, camera root and plausibility bound.
    Safe to call from several threads at once."""

    def __init__(self, zone: tzinfo, camera_root: Path, max_backlog_hours: float) -> None:
        self.zone = zone
        self._root = camera_root
        self._max_backlog = timedelta(hours=max_backlog_hours)
        self._max_backlog_hours = max_backlog_hours
        self._warned: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def capture(self, data: bytes, path: Path, mtime_ns: int | None,
                arrival: datetime) -> Capture:
        """Blocking (parses metadata): the capture time of the snapshot `data` that arrived
        at `path` at `arrival` (aware); never raises for anything in the file."""
        found = self.found(data, path, mtime_ns)
        if found is None:
            return Capture(arrival, ARRIVAL)
        if found.at > arrival + FUTURE_SLACK:
            self._reject(path, found, arrival, "in the future: the camera's clock or time "
                         "zone is wrong, or the name is no timestamp")
        elif arrival - found.at > self._max_backlog:
            self._reject(path, found, arrival, f"more than watcher.max_backlog_hours "
                         f"({self._max_backlog_hours:g} h) before the snapshot arrived")
        else:
            return Capture(min(found.at, arrival), found.source)
        return Capture(arrival, ARRIVAL)

    def found(self, data: bytes, path: Path, mtime_ns: int | None) -> Capture | None:
        """The first capture time the snapshot holds, unchecked; None when none does."""
        if (stamp := exif_date(data)) is not None and (at := self._exif_time(stamp)):
            return Capture(at, EXIF)
        if found := name_time(self._relative(path), self.zone):
            return found
        if mtime_ns is not None:
            return Capture(datetime.fromtimestamp(mtime_ns / 1e9, UTC), MTIME)
        return None

    def _exif_time(self, stamp: ExifDate) -> datetime | None:
        match = EXIF_DATE.fullmatch(stamp.date_time)
        if match is None:
            return None
        zone = self.zone
        offset = EXIF_OFFSET.fullmatch(stamp.offset or "")
        if offset is not None and int(offset[2]) < 24 and int(offset[3]) < 60:
            sign = -1 if offset[1] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(offset[2]), minutes=int(offset[3])))
        fraction = stamp.subsec if stamp.subsec and stamp.subsec.isdigit() else "0"
        micro = int(fraction[:6].ljust(6, "0"))
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return _aware(year, month, day, hour, minute, second, micro, zone=zone)

    def _relative(self, path: Path) -> PurePath:
        try:
            return path.relative_to(self._root)
        except ValueError:
            return PurePath(path.name)

    def _reject(self, path: Path, found: Capture, arrival: datetime, reason: str) -> None:
        camera = self._relative(path).parts[0]
        now = time.monotonic()
        with self._lock:
            last = self._warned.get((camera, found.source))
            loud = last is None or now - last >= WARN_EVERY_SECONDS
            if loud:
                self._warned[(camera, found.source)] = now
        (log.warning if loud else log.info)(
            "capture_time_rejected", file=str(path), source=found.source,
            captured_at=found.at.isoformat(), arrived_at=arrival.isoformat(), reason=reason,
            action="the arrival time is used")


def name_time(relative: PurePath, zone: tzinfo) -> Capture | None:
    """The capture time in a path's names (relative to the camera root): a full timestamp
    in the file name or a folder name, innermost first; else a date folder with the time
    in the folders and file name below it."""
    parts = relative.parts
    for part in reversed(parts):
        if (at := next(_timestamps(part, zone), None)) is not None:
            return Capture(at, FILE_NAME)
    for index in range(len(parts) - 2, -1, -1):
        if (date := _date_folder(parts, index)) is None:
            continue
        (year, month, day), below = date
        clock = _time_below(list(parts[below:]))
        if clock is not None and (at := _aware(year, month, day, *clock, zone=zone)):
            return Capture(at, FOLDERS)
        return None  # the innermost date folder rules; one without a time is no capture time
    return None


def _timestamps(name: str, zone: tzinfo) -> Iterator[datetime]:
    for pattern in (COMPACT, DASHED):
        for match in pattern.finditer(name):
            ms = int(match["ms"] or 0)
            year, month, day, hour, minute, second = (int(match[key]) for key in "YmdHMS")
            at = _aware(year, month, day, hour, minute, second, ms * 1000, zone=zone)
            if at is not None:
                yield at


def _date_folder(parts: tuple[str, ...], index: int) -> tuple[tuple[int, int, int], int] | None:
    """((year, month, day), index of the first part below) for a date folder at `index`:
    YYYY-MM-DD, YYYY_MM_DD, YYYYMMDD, or the last of YYYY/MM/DD."""
    if match := DATE_FOLDER.fullmatch(parts[index]):
        return (int(match["Y"]), int(match["m"]), int(match["d"])), index + 1
    if (index >= 2 and re.fullmatch(r"(19|20)\d\d", parts[index - 2])
            and TWO_DIGITS.fullmatch(parts[index - 1]) and TWO_DIGITS.fullmatch(parts[index])):
        return (int(parts[index - 2]), int(parts[index - 1]), int(parts[index])), index + 1
    return None


def _time_below(below: list[str]) -> tuple[int, int, int] | None:
    """(hour, minute, second) from two-digit folders (the first run of them) and the
    numbers the file name starts with; None without an hour. A file name alone must give
    at least hours and minutes: `01.jpg` is more likely a counter than one o'clock."""
    folders, name = below[:-1], below[-1]
    numbers: list[int] = []
    for folder in folders:
        if TWO_DIGITS.fullmatch(folder):
            numbers.append(int(folder))
        elif numbers:
            break
    numbers = numbers[:3]
    if (match := LEADING_TIME.match(name)) is not None:
        leading = [int(group) for group in match.groups() if group is not None]
        if numbers or len(leading) >= 2:
            numbers += leading[: 3 - len(numbers)]
    if not numbers:
        return None
    hour, minute, second = [*numbers, 0, 0][:3]
    return (hour, minute, second) if hour < 24 and minute < 60 and second < 60 else None


def _aware(year: int, month: int, day: int, hour: int, minute: int, second: int,
           microsecond: int = 0, *, zone: tzinfo) -> datetime | None:
    """The wall-clock time in `zone`, in UTC; None when it is no date (month 13, 30 Feb).
    In a repeated hour (clocks going back) the first is taken."""
    try:
        return datetime(year, month, day, hour, minute, second, microsecond,
                        tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved out of range
        return None


def arrival_time(timestamp: object, default: datetime) -> datetime:
    """The queue item's `timestamp` (the reference's naive UTC text) as an aware time;
    `default` when the item has none or it is unreadable."""
    if not isinstance(timestamp, str):
        return default
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return default
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
