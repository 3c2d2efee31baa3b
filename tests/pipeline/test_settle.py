"""Tests for hsid/pipeline/settle.py: the completion rules, with a fake clock."""

from __future__ import annotations

from pathlib import Path

from hsid.core.config import WatcherConfig
from hsid.pipeline.settle import (
    Completeness,
    Probe,
    SettleTracker,
    Verdict,
    completeness,
    scanned_completeness,
)
from tests.pipeline.samples import FAST_SETTLE, jpeg, png


def probe(size: int, mtime_ns: int = 1, kind: Completeness = Completeness.JPEG) -> Probe:
    return Probe(size, mtime_ns, kind)


def test_growing_file_waits_until_complete_and_stable() -> None:
    tracker = SettleTracker(WatcherConfig(**{**FAST_SETTLE, "stall_seconds": 60.0}))
    path = Path("cam/a.jpg")
    tracker.track(path, now=0.0)

    assert tracker.check(path, probe(10, 1, Completeness.INCOMPLETE), 0.0) is Verdict.WAIT
    # Stable far past the settle time, but the end-of-image marker is missing.
    assert tracker.check(path, probe(10, 1, Completeness.INCOMPLETE), 5.0) is Verdict.WAIT
    assert tracker.check(path, probe(20, 2), 5.5) is Verdict.WAIT  # complete, not yet stable
    assert tracker.check(path, probe(20, 2), 5.55) is Verdict.WAIT
    assert tracker.check(path, probe(20, 2), 5.75) is Verdict.READY
    assert tracker.pending() == []


def test_unknown_content_takes_the_full_settle_time() -> None:
    tracker = SettleTracker(WatcherConfig(**FAST_SETTLE))
    path = Path("cam/a.png")
    tracker.track(path, now=0.0)
    unknown = probe(100, 1, Completeness.UNKNOWN)

    assert tracker.check(path, unknown, 0.0) is Verdict.WAIT
    assert tracker.check(path, unknown, 0.2) is Verdict.WAIT
    assert tracker.check(path, unknown, 0.3) is Verdict.READY


def test_upload_that_stalls_before_its_end_is_taken_as_it_is() -> None:
    tracker = SettleTracker(WatcherConfig(**FAST_SETTLE))
    path = Path("cam/a.jpg")
    tracker.track(path, now=0.0)

    assert tracker.check(path, probe(10, 1, Completeness.INCOMPLETE), 0.0) is Verdict.WAIT
    assert tracker.check(path, probe(20, 2, Completeness.INCOMPLETE), 0.9) is Verdict.WAIT
    assert tracker.check(path, probe(20, 2, Completeness.INCOMPLETE), 1.8) is Verdict.WAIT
    assert tracker.check(path, probe(20, 2, Completeness.INCOMPLETE), 2.0) is Verdict.READY
    assert len(tracker) == 0


def test_late_event_for_a_taken_file_is_unchanged() -> None:
    tracker = SettleTracker(WatcherConfig(**FAST_SETTLE))
    path = Path("cam/a.jpg")
    tracker.track(path, now=0.0)
    tracker.check(path, probe(20), 0.0)
    assert tracker.check(path, probe(20), 0.5) is Verdict.READY
    tracker.remember_taken(path, probe(20))

    tracker.track(path, now=5.0)
    tracker.check(path, probe(20), 5.0)
    assert tracker.check(path, probe(20), 5.5) is Verdict.UNCHANGED
    tracker.track(path, now=9.0)  # rewritten with new bytes: a new image
    tracker.check(path, probe(30, 2), 9.0)
    assert tracker.check(path, probe(30, 2), 9.5) is Verdict.READY


def test_discarded_file_is_gone() -> None:
    tracker = SettleTracker(WatcherConfig(**FAST_SETTLE))
    tracker.track(Path("cam/a.jpg"), now=0.0)
    tracker.discard(Path("cam/a.jpg"))
    assert tracker.check(Path("cam/a.jpg"), probe(20), 1.0) is Verdict.GONE


def test_completeness_by_content() -> None:
    image = jpeg(1)
    assert completeness(len(image), image[:8], image[-12:]) is Completeness.JPEG
    assert completeness(100, image[:8], image[40:52]) is None  # only the whole file tells
    assert scanned_completeness(image + b"\0" * 100) is Completeness.JPEG  # zero padding
    assert scanned_completeness(image[:-30]) is Completeness.INCOMPLETE
    picture = png(1)
    assert completeness(len(picture), picture[:8], picture[-12:]) is Completeness.PNG
    assert completeness(100, picture[:8], picture[20:32]) is None
    assert scanned_completeness(picture + b"junk") is Completeness.PNG
    assert completeness(3, b"abc", b"abc") is Completeness.INCOMPLETE
    assert completeness(20, b"plain text", b"more text") is Completeness.UNKNOWN
