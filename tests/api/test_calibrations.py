"""Calibration routes under a camera: CRUD."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from tests import seed

CALIBRATIONS = "/api/cameras/front_door/calibrations"


async def test_calibration_crud(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    created = await api_client.post(CALIBRATIONS, json={
        "calibration_type": "height", "calibration_data": {"metres": 2.5, "points": [[0, 1]]}})
    assert created.status == 201
    calibration = await created.json()
    url = f"{CALIBRATIONS}/{calibration['id']}"
    assert calibration["calibration_data"] == {"metres": 2.5, "points": [[0, 1]]}

    listed = await (await api_client.get(f"{CALIBRATIONS}?calibration_type=height")).json()
    assert listed["count"] == 1
    patched = await api_client.patch(url, json={"calibration_data": {"metres": 3}})
    assert (await patched.json())["calibration_data"] == {"metres": 3}
    assert (await (await api_client.get(url)).json())["calibration_type"] == "height"
    assert (await api_client.delete(url)).status == 204
    assert (await api_client.get(url)).status == 404
    assert (await api_client.get("/api/cameras/nope/calibrations")).status == 404


async def test_calibration_bodies_are_validated(api_client: TestClient,
                                                db: asyncpg.Pool) -> None:
    await seed.camera(db)
    for body, field in (({"calibration_type": "x"}, "calibration_data"),
                        ({"calibration_type": "x", "calibration_data": [1]}, "calibration_data"),
                        ({"calibration_type": "x", "calibration_data": {"k\u0000": 1}},
                         "calibration_data"),
                        ({"calibration_type": "", "calibration_data": {}}, "calibration_type")):
        response = await api_client.post(CALIBRATIONS, json=body)
        assert response.status == 422
        assert (await response.json())["error"]["field"] == field
