"""Annotated pictures from the API: a detection's image with its boxes, an event's snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient

from hsid.imaging.annotate import CLASS_COLOURS
from tests import seed
from tests.imaging.pictures import (
    GREY,
    decoded,
    detections_of_one_image,
    event_of,
    grey_jpeg,
    is_grey,
    near,
    plain_jpeg,
)


async def test_annotated_image_has_every_box_of_the_image_where_it_is(
    api_client: TestClient, db: asyncpg.Pool, camera_root: Path
) -> None:
    await seed.camera(db)
    image = camera_root / "front_door" / "snap.jpg"
    image.parent.mkdir()
    image.write_bytes(grey_jpeg())
    person, _car = await detections_of_one_image(
        db, image, ("person", 0.95, 100, 150, 200, 300), ("car", 0.80, 500, 300, 250, 150))

    response = await api_client.get(f"/api/detections/{person}/image?annotate=true")

    assert response.status == 200 and response.content_type == "image/jpeg"
    pixels = decoded(await response.read())
    assert pixels.shape == (600, 800, 3)
    assert near(pixels[300, 100], CLASS_COLOURS["person"])
    assert near(pixels[375, 750], CLASS_COLOURS["car"]), "the image's other detection too"
    assert is_grey(pixels[300, 200]) and is_grey(pixels[50, 700])

    scaled = decoded(await (await api_client.get(
        f"/api/detections/{person}/image?annotate=true&width=400")).read())
    assert scaled.shape == (300, 400, 3)
    assert near(scaled[150, 50], CLASS_COLOURS["person"])

    plain = await api_client.get(f"/api/detections/{person}/image?width=400")
    plain_pixels = decoded(await plain.read())
    assert plain_pixels.shape == (300, 400, 3) and is_grey(plain_pixels[150, 50]), "no boxes"
    unchanged = await api_client.get(f"/api/detections/{person}/image")
    assert await unchanged.read() == image.read_bytes(), "no parameters: the file as stored"


async def test_event_snapshot_shows_its_surest_person_else_its_surest_detection(
    api_client: TestClient, db: asyncpg.Pool, camera_root: Path
) -> None:
    await seed.camera(db)
    folder = camera_root / "front_door"
    folder.mkdir()
    (folder / "car.jpg").write_bytes(plain_jpeg(20))
    (folder / "person.jpg").write_bytes(plain_jpeg(230))
    earlier = datetime.now(UTC) - timedelta(seconds=5)
    [car] = await detections_of_one_image(db, folder / "car.jpg",
                                          ("car", 0.99, 500, 300, 250, 150), at=earlier)
    [person] = await detections_of_one_image(db, folder / "person.jpg",
                                             ("person", 0.60, 100, 150, 200, 300))

    response = await api_client.get(f"/api/events/{await event_of(db, [car, person])}/snapshot")

    assert response.status == 200 and response.content_type == "image/jpeg"
    pixels = decoded(await response.read())
    assert pixels[500, 600].min() > 200, "the person's (light) image, not the surer car's"
    assert near(pixels[300, 100], CLASS_COLOURS["person"])

    cars_only = await api_client.get(f"/api/events/{await event_of(db, [car])}/snapshot?width=200")
    pixels = decoded(await cars_only.read())
    assert pixels.shape == (150, 200, 3) and pixels[10, 10].max() < 50, "the car's (dark) image"


async def test_the_snapshot_copy_hsid_kept_is_what_is_read(
    api_client: TestClient, db: asyncpg.Pool, camera_root: Path, state_dir: Path
) -> None:
    """A camera that re-uses one file name: the detection points at hsid's copy, which
    still holds the bytes analysed after the camera overwrote its file."""
    await seed.camera(db)
    upload = camera_root / "front_door" / "snapshot.jpg"
    upload.parent.mkdir()
    upload.write_bytes(plain_jpeg(20))  # the camera's newer image under the same name
    copy = state_dir / "snapshots" / "front_door" / "2026-11-29" / f"{'ab' * 32}.jpg"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(grey_jpeg())
    [person] = await detections_of_one_image(db, copy, ("person", 0.9, 100, 150, 200, 300))

    response = await api_client.get(f"/api/events/{await event_of(db, [person])}/snapshot")

    pixels = decoded(await response.read())
    assert abs(pixels[10, 700].mean() - GREY) < 12 and near(pixels[300, 100],
                                                             CLASS_COLOURS["person"])


async def test_missing_or_unreadable_pictures_are_404_json(
    api_client: TestClient, db: asyncpg.Pool, camera_root: Path
) -> None:
    await seed.camera(db)
    folder = camera_root / "front_door"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0not an image\xff\xd9")
    [gone] = await detections_of_one_image(db, folder / "gone.jpg", ("person", 0.9, 1, 1, 5, 5))
    [broken] = await detections_of_one_image(db, folder / "broken.jpg",
                                             ("person", 0.9, 1, 1, 5, 5))
    empty_event = await event_of(db, [])

    for path in (f"/api/detections/{gone}/image?annotate=true",
                 f"/api/detections/{broken}/image?annotate=true",
                 f"/api/events/{await event_of(db, [gone])}/snapshot",
                 f"/api/events/{empty_event}/snapshot",
                 "/api/events/31337/snapshot",
                 "/api/detections/31337/image?width=100"):
        response = await api_client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found"

    too_wide = await api_client.get(f"/api/detections/{broken}/image?width=100000")
    assert too_wide.status == 400
    assert (await too_wide.json())["error"]["field"] == "width"
