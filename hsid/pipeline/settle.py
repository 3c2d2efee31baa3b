"""Settling: deciding when an uploaded file is complete, from successive looks at it.

A JPEG or PNG is complete once its image has ended (image_format.image_end: bytes after
the end, padding or junk, are allowed) and it has kept still for a moment; any other file
once it has kept still for `settle_seconds`. An upload that stops short of its end and keeps
still for `stall_seconds` is taken as it is: a cut-off JPEG still shows its upper part, and
an empty or undecodable file is dead-lettered by the detect worker with the reason, never
forgotten.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path

from hsid.core.config import WatcherConfig
from hsid.pipeline.image_format import JPEG_EOI, JPEG_SOI, PNG_IEND, PNG_SIGNATURE, image_end

TAKEN_MEMORY = 10_000  # taken files whose (size, mtime) we remember, to ignore late events

# A file whose tail is not its end is read whole to find the end; past this size it is not
# (no camera snapshot comes near it) and counts as incomplete until it stalls.
SCAN_MAX_BYTES = 64 * 1024 * 1024


class Completeness(StrEnum):
    JPEG = "jpeg"  # starts like a JPEG and its image has ended
    PNG = "png"  # starts like a PNG and has its IEND chunk
    UNKNOWN = "unknown"  # neither by content: only stability can tell
    INCOMPLETE = "incomplete"  # a JPEG or PNG without its end, or too short to tell


class Verdict(Enum):
    WAIT = "wait"
    READY = "ready"
    UNCHANGED = "unchanged"  # complete, but exactly as when we last took it
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Probe:
    """One look at a file: what decides whether it is still being written."""

    size: int
    mtime_ns: int
    completeness: Completeness


@dataclass(slots=True)
class _Pending:
    first_seen: float
    stable_since: float
    signature: tuple[int, int] | None = None


def completeness(size: int, head: bytes, tail: bytes) -> Completeness | None:
    """Judge a file by its first 8 and last 12 bytes; None when only the whole file can
    tell (a JPEG or PNG whose tail is not its end: it may be padded, or cut short)."""
    if head.startswith(JPEG_SOI):
        return Completeness.JPEG if tail.endswith(JPEG_EOI) else None
    if head.startswith(PNG_SIGNATURE):
        return Completeness.PNG if tail.endswith(PNG_IEND) else None
    return Completeness.INCOMPLETE if size < len(PNG_SIGNATURE) else Completeness.UNKNOWN


def scanned_completeness(data: bytes) -> Completeness:
    """Judge a whole JPEG or PNG file by where its image ends, wherever that is."""
    if image_end(data) is None:
        return Completeness.INCOMPLETE
    return Completeness.PNG if data.startswith(PNG_SIGNATURE) else Completeness.JPEG


def probe_file(path: Path) -> Probe | None:
    """Size, mtime and completeness of a regular file (following links); None if it is not one.

    Blocking. A file we may not read is reported as UNKNOWN, so that it settles and taking
    it says why it was refused.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        # O_NONBLOCK: a FIFO swapped in under an image name must not hang the thread.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
            file.seek(max(0, info.st_size - len(PNG_IEND)))
            kind = completeness(info.st_size, head, file.read())
            if kind is None:
                file.seek(0)
                kind = (scanned_completeness(file.read()) if info.st_size <= SCAN_MAX_BYTES
                        else Completeness.INCOMPLETE)
    except FileNotFoundError:
        return None
    except OSError:
        return Probe(info.st_size, info.st_mtime_ns, Completeness.UNKNOWN)
    return Probe(info.st_size, info.st_mtime_ns, kind)


class SettleTracker:
    """Decides from successive probes when a pending file is complete; pure, time passed in."""

    def __init__(self, config: WatcherConfig) -> None:
        self._config = config
        self._pending: dict[Path, _Pending] = {}
        self._taken: dict[Path, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, path: Path, now: float) -> None:
        """Start watching `path`; a path already pending keeps its first-seen time."""
        self._pending.setdefault(path, _Pending(first_seen=now, stable_since=now))

    def discard(self, path: Path) -> bool:
        """Stop watching `path`; True when it was pending (not complete yet)."""
        return self._pending.pop(path, None) is not None

    def pending(self) -> list[Path]:
        return list(self._pending)

    def check(self, path: Path, probe: Probe, now: float) -> Verdict:
        """The verdict for `path` after this probe; READY and UNCHANGED untrack it. An
        INCOMPLETE file is READY once it has stalled: the caller takes it as it is."""
        entry = self._pending.get(path)
        if entry is None:
            return Verdict.GONE
        signature = (probe.size, probe.mtime_ns)
        if signature != entry.signature:
            entry.signature, entry.stable_since = signature, now
        if now - entry.stable_since >= self._settle_seconds(probe.completeness):
            del self._pending[path]
            return Verdict.UNCHANGED if self._taken.get(path) == signature else Verdict.READY
        return Verdict.WAIT

    def forget_taken(self) -> None:
        """Forget what was taken, so a rescan takes those files again (Redis lost them)."""
        self._taken.clear()

    def remember_taken(self, path: Path, probe: Probe) -> None:
        """Remember what was taken, so a late event for the same bytes is not a new image."""
        self._taken.pop(path, None)
        self._taken[path] = (probe.size, probe.mtime_ns)
        if len(self._taken) > TAKEN_MEMORY:
            del self._taken[next(iter(self._taken))]

    def _settle_seconds(self, kind: Completeness) -> float:
        if kind is Completeness.INCOMPLETE:
            return self._config.stall_seconds
        if kind is Completeness.JPEG:
            return self._config.jpeg_settle_seconds
        return self._config.settle_seconds
