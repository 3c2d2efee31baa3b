"""Zone routes under a camera: CRUD and coordinate validation against the shape."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests import seed

ZONES = "/api/cameras/front_door/zones"


async def test_zone_crud(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    created = await api_client.post(ZONES, json={
        "id": "porch", "name": "Porch", "zone_type": "entry_point",
        "coordinates": [[0.1, 0.1], [0.5, 0.5]]})
    assert created.status == 201
    zone = await created.json()
    assert zone["shape"] == "rectangle" and zone["color"] == "#3B82F6" and zone["enabled"]
    generated = await (await api_client.post(ZONES, json={
        "name": "Lawn", "shape": "polygon", "priority": 5,
        "coordinates": [[0, 0], [1, 0], [0.5, 1]]})).json()
    assert len(generated["id"]) == 32

    listed = await (await api_client.get(ZONES)).json()
    assert [z["id"] for z in listed["items"]] == [generated["id"], "porch"]
    assert listed["count"] == 2

    patched = await api_client.patch(f"{ZONES}/porch", json={"color": "#ff0000",
                                                              "enabled": False})
    body = await patched.json()
    assert body["color"] == "#ff0000" and not body["enabled"]
    assert body["updated_at"] >= zone["updated_at"]
    disabled = await (await api_client.get(f"{ZONES}?enabled=false")).json()
    assert [z["id"] for z in disabled["items"]] == ["porch"]

    got = await (await api_client.get(f"{ZONES}/porch")).json()
    assert got["coordinates"] == [[0.1, 0.1], [0.5, 0.5]] and got["zone_type"] == "entry_point"
    assert (await api_client.get("/api/cameras/front_door/zones/nope")).status == 404
    assert (await api_client.delete(f"{ZONES}/porch")).status == 204
    assert (await api_client.get(f"{ZONES}/porch")).status == 404
    assert (await api_client.delete(f"{ZONES}/porch")).status == 404
    duplicate = await api_client.post(ZONES, json={
        "id": generated["id"], "name": "again", "coordinates": [[0, 0], [1, 1]]})
    assert duplicate.status == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"coordinates": [[0, 0], [1, 1], [1, 0]]}, "coordinates"),
        ({"shape": "polygon", "coordinates": [[0, 0], [1, 1]]}, "coordinates"),
        ({"coordinates": [[0, 0], [1.5, 1]]}, "coordinates[1][0]"),
        ({"coordinates": [[0, 0], [-0.1, 1]]}, "coordinates[1][0]"),
        ({"coordinates": [[0, 0], [1]]}, "coordinates[1]"),
        ({"coordinates": [[0, 0], ["a", 1]]}, "coordinates[1][0]"),
        ({"coordinates": [[0, 0], [1, 1]], "color": "red"}, "color"),
        ({"coordinates": [[0, 0], [1, 1]], "color": "#12345G"}, "color"),
        ({"coordinates": [[0, 0], [1, 1]], "zone_type": "moat"}, "zone_type"),
        ({"coordinates": [[0, 0], [1, 1]], "shape": "circle"}, "shape"),
        ({"coordinates": [[0, 0], [1, 1]], "id": "a/b"}, "id"),
    ],
)
async def test_bad_zones_are_422(api_client: TestClient, db: asyncpg.Pool, body: dict,
                                 field: str) -> None:
    await seed.camera(db)
    response = await api_client.post(ZONES, json={"name": "z", **body})
    assert response.status == 422
    assert (await response.json())["error"]["field"] == field


async def test_patch_checks_the_merged_shape(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    await api_client.post(ZONES, json={"id": "z", "name": "z",
                                       "coordinates": [[0, 0], [1, 1]]})
    to_polygon = await api_client.patch(f"{ZONES}/z", json={"shape": "polygon"})
    assert to_polygon.status == 422
    both = await api_client.patch(f"{ZONES}/z", json={
        "shape": "polygon", "coordinates": [[0, 0], [1, 0], [1, 1]]})
    assert both.status == 200 and (await both.json())["shape"] == "polygon"


async def test_zones_of_a_missing_camera_are_404(api_client: TestClient) -> None:
    response = await api_client.post("/api/cameras/nope/zones", json={
        "name": "z", "coordinates": [[0, 0], [1, 1]]})
    assert response.status == 404
    assert (await api_client.get("/api/cameras/nope/zones/z")).status == 404
