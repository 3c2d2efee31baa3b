"""Tests for hsid/pipeline/thumbnails.py: crops, size caps, paths and atomic writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from hsid.core.errors import InvalidInput
from hsid.pipeline.detector import DecodedImage, ObjectDetection, decode
from hsid.pipeline.state_files import write_atomically
from hsid.pipeline.thumbnails import make_thumbnail, thumbnail_path

MAX_PIXELS = 50_000_000


def decoded(width: int, height: int, red_box: tuple[int, int, int, int]) -> DecodedImage:
    """A grey PNG with a red rectangle, decoded the way the detect worker decodes it."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    x, y, w, h = red_box
    image[y : y + h, x : x + w] = (0, 0, 255)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return decode(data.tobytes(), MAX_PIXELS)


def detection(x: int, y: int, w: int, h: int) -> ObjectDetection:
    return ObjectDetection("person", 0.95, x, y, w, h)


def size_of(jpeg: bytes) -> tuple[int, int]:
    assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return image.shape[1], image.shape[0]


def test_crop_is_the_box_plus_ten_percent_each_side() -> None:
    image = decoded(1000, 800, (100, 200, 300, 150))
    thumb = make_thumbnail(image, detection(100, 200, 300, 150), max_side=1000)
    assert size_of(thumb) == (360, 180)


def test_crop_is_clamped_at_the_image_edges() -> None:
    image = decoded(1000, 800, (0, 0, 100, 100))
    assert size_of(make_thumbnail(image, detection(0, 0, 100, 100), max_side=1000)) == (110, 110)
    corner = detection(900, 700, 100, 100)
    assert size_of(make_thumbnail(image, corner, max_side=1000)) == (110, 110)


def test_longest_side_is_capped_keeping_the_aspect_ratio() -> None:
    image = decoded(1920, 1080, (100, 100, 600, 300))
    assert size_of(make_thumbnail(image, detection(100, 100, 600, 300), max_side=320)) == (320, 160)


def test_crop_from_a_reduced_decode_lands_on_the_object() -> None:
    image = decoded(5200, 2800, (4000, 1000, 800, 1200))
    assert image.pixels.shape[:2] == (700, 1300)  # decoded at quarter size
    thumb = make_thumbnail(image, detection(4000, 1000, 800, 1200), max_side=4096)
    width, height = size_of(thumb)
    assert abs(width - 240) <= 2 and abs(height - 360) <= 2  # (800, 1200) * 1.2 / 4
    centre = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)[height // 2, width // 2]
    assert centre[2] > 200 and centre[0] < 60 and centre[1] < 60  # red, in BGR


def test_thumbnail_path_is_per_camera_and_utc_day(tmp_path: Path) -> None:
    local = datetime(2024, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert thumbnail_path(tmp_path, "front_door", local, "42") == (
        tmp_path / "thumbnails" / "front_door" / "2024-02-29" / "42.jpg"
    )
    naive = datetime(2024, 3, 1, 23, 59)
    assert thumbnail_path(tmp_path, "yard", naive, "d-7").parts[-2:] == ("2024-03-01", "d-7.jpg")
    aware = datetime(2024, 3, 1, 23, 59, tzinfo=UTC)
    assert thumbnail_path(tmp_path, "yard", aware, "x") == (
        thumbnail_path(tmp_path, "yard", naive, "x")
    )


@pytest.mark.parametrize(
    ("camera_id", "name"), [("..", "1"), ("a/b", "1"), ("cam", "../1"), ("", "1")]
)
def test_thumbnail_path_refuses_names_that_leave_the_folder(
    tmp_path: Path, camera_id: str, name: str
) -> None:
    with pytest.raises(InvalidInput):
        thumbnail_path(tmp_path, camera_id, datetime.now(UTC), name)


def test_state_files_are_written_with_folders_and_replaced_atomically(tmp_path: Path) -> None:
    path = thumbnail_path(tmp_path, "cam", datetime(2024, 1, 2, tzinfo=UTC), "1")
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["1.jpg"]  # no temporary files left
