"""Inputs shared by the pipeline tests: small real images and batch contexts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from hsid.analysis.assessment import BatchContext, DetectionContext

# Watcher timings short enough for tests, long enough to tell the rules apart.
FAST_SETTLE = {"settle_seconds": 0.3, "jpeg_settle_seconds": 0.1, "stall_seconds": 1.0}

TZ = timezone(timedelta(hours=2))
NIGHT = datetime(2024, 6, 11, 2, 14, tzinfo=TZ)  # a Tuesday
DAY = datetime(2024, 6, 11, 14, 5, tzinfo=TZ)


def jpeg(seed: int, size: int = 64) -> bytes:
    """A real JPEG (starts FF D8, ends FF D9) whose content depends on `seed`."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def snapshot(path: Path, patches: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]],
             size: tuple[int, int] = (1920, 1080)) -> Path:
    """A grey JPEG (1080p unless `size`) with solid patches (x0, y0, x1, y1) in the given
    BGR colours, written to `path`: the tiny detector sees red as a person, blue as a car."""
    image = np.full((size[1], size[0], 3), 128, np.uint8)
    for (x0, y0, x1, y1), colour in patches:
        image[y0:y1, x0:x1] = colour
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def person(confidence: float = 0.93, zones: list[str] | None = None) -> DetectionContext:
    return DetectionContext("person", confidence, (100, 700, 400, 1060), 1920, 1080, zones or [])


def cat(confidence: float = 0.93) -> DetectionContext:
    return DetectionContext("cat", confidence, (900, 500, 1000, 560), 1920, 1080, [])


def batch(*detections: DetectionContext, at: datetime = NIGHT, camera: str = "Front Door",
          extra: list[str] | None = None) -> BatchContext:
    return BatchContext(camera, at, list(detections), extra or [])
