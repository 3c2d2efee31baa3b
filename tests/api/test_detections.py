"""Detection routes: filters, detail, and file serving that never leaves its roots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests import seed

JPEG = b"\xff\xd8\xff\xe0thumb\xff\xd9"
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


async def test_list_filters_and_get(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    await seed.camera(db, "garage")
    person = await seed.detection(db, confidence=0.95, detected_at=T0)
    car = await seed.detection(db, "garage", object_type="car", confidence=0.6,
                               detected_at=T0 + timedelta(minutes=1))
    dog = await seed.detection(db, object_type="dog", confidence=0.4,
                               detected_at=T0 + timedelta(minutes=2))
    for query, expected in (("", [dog, car, person]), ("camera_id=front_door", [dog, person]),
                            ("object_type=car", [car]), ("min_confidence=0.5", [car, person]),
                            ("start=2026-01-10T12:01:00Z", [dog, car]),
                            ("end=2026-01-10T12:01:00Z", [person])):
        body = await (await api_client.get(f"/api/detections?{query}")).json()
        assert [d["id"] for d in body["items"]] == expected, query
        assert body["count"] == len(expected)
    detail = await (await api_client.get(f"/api/detections/{car}")).json()
    assert detail["object_type"] == "car" and detail["bbox_width"] == 30
    assert (await api_client.get("/api/detections/31337")).status == 404
    assert (await api_client.get("/api/detections/31337/thumbnail")).status == 404


async def test_thumbnail_and_image_are_served(api_client: TestClient, db: asyncpg.Pool,
                                              state_dir: Path, camera_root: Path) -> None:
    (camera_root / "front_door").mkdir()
    image = camera_root / "front_door" / "snap.jpg"
    image.write_bytes(JPEG + b"full")
    thumb = state_dir / "thumbnails" / "1.jpg"
    thumb.parent.mkdir()
    thumb.write_bytes(JPEG)
    await seed.camera(db)
    detection = await seed.detection(db, file_path=str(image), thumbnail_path=str(thumb))
    response = await api_client.get(f"/api/detections/{detection}/thumbnail")
    assert response.status == 200 and response.content_type == "image/jpeg"
    assert await response.read() == JPEG
    response = await api_client.get(f"/api/detections/{detection}/image")
    assert await response.read() == JPEG + b"full"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"\xff\xd8 not yours \xff\xd9")
    return secret


def hostile_paths(outside: Path, state_dir: Path, camera_root: Path) -> dict[str, str]:
    """Stored paths that try to leave the roots, keyed by the trick they use."""
    link = state_dir / "link.jpg"
    link.symlink_to(outside)
    linked_dir = camera_root / "linked"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    (state_dir / "notes.txt").write_text("inside, but not an image")
    return {
        "dotdot": f"{state_dir}/../outside/secret.jpg",
        "absolute": str(outside),
        "etc": "/etc/passwd",
        "symlink_file": str(link),
        "symlink_dir": str(linked_dir / "secret.jpg"),
        "encoded_slash": f"{state_dir}/..%2Foutside%2Fsecret.jpg",
        "relative": "outside/secret.jpg",
        "escaped_nul": f"{state_dir}/../outside/secret.jpg%00.jpg",
        "not_an_image": str(state_dir / "notes.txt"),
        "directory": str(camera_root),
    }


@pytest.mark.parametrize("route", ["thumbnail", "image"])
async def test_files_outside_the_roots_are_never_served(
    api_client: TestClient, db: asyncpg.Pool, outside: Path, state_dir: Path,
    camera_root: Path, route: str,
) -> None:
    await seed.camera(db)
    for trick, stored in hostile_paths(outside, state_dir, camera_root).items():
        detection = await seed.detection(db, file_path=stored, thumbnail_path=stored)
        response = await api_client.get(f"/api/detections/{detection}/{route}")
        assert response.status == 404, trick
        assert b"not yours" not in await response.read(), trick


async def test_path_in_the_url_is_never_a_file_path(api_client: TestClient) -> None:
    for path in ("/api/detections/..%2F..%2Fetc%2Fpasswd/image",
                 "/api/detections/%2Fetc%2Fpasswd/thumbnail",
                 "/api/detections/1/../../../etc/passwd"):
        response = await api_client.get(path)
        assert response.status in (400, 404), path
        assert b"root:" not in await response.read()
