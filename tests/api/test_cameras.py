"""Camera routes: list, get, create, PATCH, cascading delete, snapshot."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from hsid.cameras.registry import normalize_camera_id
from hsid.core.config import Config
from tests import seed
from tests.pipeline.samples import jpeg
from tests.pipeline.test_watcher import running_watcher

JPEG = b"\xff\xd8\xff\xe0fake jpeg\xff\xd9"


async def test_create_get_list_update_camera(api_client: TestClient, camera_root: Path) -> None:
    created = await api_client.post("/api/cameras", json={"name": "Front Door"})
    assert created.status == 201
    camera = await created.json()
    assert camera["id"] == "front_door" and camera["status"] == "online"
    assert camera["folder_path"] == str(camera_root / "front_door")

    by_folder = await api_client.post("/api/cameras", json={
        "name": "Back yard", "folder_path": "Back-Yard", "status": "offline"})
    assert (await by_folder.json())["id"] == "back_yard"

    listed = await (await api_client.get("/api/cameras?limit=1")).json()
    assert listed["count"] == 2 and len(listed["items"]) == 1 and listed["limit"] == 1
    offline = await (await api_client.get("/api/cameras?status=offline")).json()
    assert [c["id"] for c in offline["items"]] == ["back_yard"] and offline["count"] == 1

    patched = await api_client.patch("/api/cameras/front_door", json={"status": "error"})
    assert (await patched.json())["status"] == "error"
    got = await (await api_client.get("/api/cameras/front_door")).json()
    assert got["status"] == "error" and got["name"] == "Front Door"


async def test_camera_conflicts_and_refusals(api_client: TestClient) -> None:
    assert (await api_client.post("/api/cameras", json={"name": "Porch"})).status == 201
    again = await api_client.post("/api/cameras", json={"name": "porch"})
    assert again.status == 409
    outside = await api_client.post("/api/cameras", json={"name": "x", "folder_path": "/etc"})
    assert outside.status == 422 and (await outside.json())["error"]["field"] == "folder_path"
    climbing = await api_client.post("/api/cameras", json={"name": "x",
                                                           "folder_path": "../escape"})
    assert climbing.status == 422
    same_folder = await api_client.post("/api/cameras", json={
        "id": "porch_2", "name": "Porch 2", "folder_path": "porch"})
    assert same_folder.status == 409  # one folder is one camera
    bad_id = await api_client.post("/api/cameras", json={"id": "Porch!", "name": "x"})
    assert bad_id.status == 422 and (await bad_id.json())["error"]["field"] == "id"
    nothing = await api_client.patch("/api/cameras/porch", json={})
    assert nothing.status == 422
    renamed_id = await api_client.patch("/api/cameras/porch", json={"id": "other"})
    assert renamed_id.status == 422


async def test_a_name_in_any_script_gets_an_ascii_id(api_client: TestClient) -> None:
    for name in ("前门", "!!!"):
        created = await api_client.post("/api/cameras", json={"name": name})
        assert created.status == 201
        camera = await created.json()
        assert camera["name"] == name
        assert camera["id"] == normalize_camera_id(name)
        assert re.fullmatch(r"cam-[0-9a-f]{6}", camera["id"])
    indkorsel = await api_client.post("/api/cameras", json={"name": "Indkørsel"})
    assert (await indkorsel.json())["id"] == "indkorsel"


async def test_camera_registered_with_a_folder_is_watched_there_under_its_id(
    api_client: TestClient, config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
    camera_root: Path,
) -> None:
    created = await api_client.post("/api/cameras", json={
        "id": "gate", "name": "Gate north", "folder_path": "Einfahrt"})
    assert created.status == 201
    folder = camera_root / "Einfahrt"
    async with running_watcher(config, db, redis) as watcher:
        folder.mkdir()  # the folder appears after the camera was registered
        await asyncio.sleep(0.3)
        (folder / "snap.jpg").write_bytes(jpeg(1))
        [item] = await watcher.items(1)

    assert item["camera_id"] == "gate"
    rows = await db.fetch("SELECT id, name, folder_path, last_seen_at FROM cameras")
    assert [(row["id"], row["name"], row["folder_path"]) for row in rows] == [
        ("gate", "Gate north", str(folder))]
    assert rows[0]["last_seen_at"] is not None


async def test_missing_camera_is_404(api_client: TestClient) -> None:
    for method, path in (("GET", "/api/cameras/nope"), ("DELETE", "/api/cameras/nope"),
                         ("GET", "/api/cameras/nope/snapshot"),
                         ("GET", "/api/cameras/nope/zones")):
        response = await api_client.request(method, path)
        assert response.status == 404, path
    patch = await api_client.patch("/api/cameras/nope", json={"name": "x"})
    assert patch.status == 404


async def test_delete_cascades_per_the_reference(api_client: TestClient,
                                                 db: asyncpg.Pool) -> None:
    await seed.camera(db)
    await seed.camera(db, "garage")
    detection = await seed.detection(db)
    event = await seed.event(db, detection_ids=[detection])
    await seed.alert(db, event)
    await seed.scene_change(db)
    await db.execute("INSERT INTO zones (id, camera_id, name, coordinates) "
                     "VALUES ('z1', 'front_door', 'porch', '[[0,0],[1,1]]')")
    await db.execute("INSERT INTO user_calibrations (camera_id, calibration_type, "
                     "calibration_data) VALUES ('front_door', 'height', '{}')")
    await db.execute("INSERT INTO activity_baselines (camera_id, hour, day_of_week) "
                     "VALUES ('front_door', 1, 1)")
    response = await api_client.delete("/api/cameras/front_door")
    assert response.status == 204
    for table in ("detections", "events", "alerts", "scene_changes", "zones",
                  "user_calibrations", "activity_baselines"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await db.fetchval("SELECT count(*) FROM cameras") == 1


async def test_snapshot_serves_the_newest_detection_image(
    api_client: TestClient, db: asyncpg.Pool, camera_root: Path
) -> None:
    folder = camera_root / "front_door"
    folder.mkdir()
    await seed.camera(db, folder=str(folder))
    no_image = await api_client.get("/api/cameras/front_door/snapshot")
    assert no_image.status == 404

    older, newer = folder / "older.jpg", folder / "newer.png"
    older.write_bytes(JPEG)
    newer.write_bytes(b"\x89PNG fake")
    os.utime(older, (1, 1))
    fallback = await api_client.get("/api/cameras/front_door/snapshot")
    assert fallback.status == 200 and fallback.content_type == "image/png"

    await seed.detection(db, file_path=str(older))
    latest = await api_client.get("/api/cameras/front_door/snapshot")
    assert latest.status == 200 and latest.content_type == "image/jpeg"
    assert await latest.read() == JPEG


async def test_snapshot_never_reads_outside_the_camera_root(
    api_client: TestClient, db: asyncpg.Pool, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(JPEG)
    await seed.camera(db, folder=str(outside))
    await seed.detection(db, file_path=str(outside / "secret.jpg"))
    response = await api_client.get("/api/cameras/front_door/snapshot")
    assert response.status == 404
