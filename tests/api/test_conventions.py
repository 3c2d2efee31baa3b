"""API conventions shared by every route: request ids, error shape, bad input never a 500."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests import seed
from tests.api.conftest import MakeClient


def error_of(body: dict) -> dict:
    assert set(body) == {"error"}
    return body["error"]


async def test_request_id_is_echoed_or_made(api_client: TestClient) -> None:
    given = await api_client.get("/api/cameras", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await api_client.get("/api/cameras", headers={"X-Request-ID": "bad id\twith tab"})
    assert len(made.headers["X-Request-ID"]) == 36
    missing = await api_client.get("/api/nothing-here")
    assert missing.status == 404 and missing.headers["X-Request-ID"]
    assert error_of(await missing.json())["code"] == "not_found"


async def test_wrong_method_is_405_with_allow(api_client: TestClient) -> None:
    response = await api_client.put("/api/cameras")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert error_of(await response.json())["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"\xff\xfe{}", 400, "body"),
        (b'{"name": NaN, "folder_path": "x"}', 400, "body"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "body"),
        (b"[]", 422, "body"),
        (b'{"name": "x", "colour": 1}', 422, "colour"),
        (b'{"name": 5}', 422, "name"),
        (b'{"name": "a\\u0000b"}', 422, "name"),
        (b'{"name": "\\ud800"}', 422, "name"),
        (b'{"name": "ok", "status": "sleeping"}', 422, "status"),
        (b'{"name": "ok", "status": null}', 422, "status"),
        (b'{"status": "online"}', 422, "name"),
    ],
)
async def test_bad_bodies_are_4xx_naming_the_field(
    api_client: TestClient, body: bytes, status: int, field: str
) -> None:
    response = await api_client.post("/api/cameras", data=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status == status, await response.text()
    assert error_of(await response.json())["field"] == field


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/events?limit=0", "limit"),
        ("/api/events?limit=1001", "limit"),
        ("/api/events?limit=abc", "limit"),
        ("/api/events?offset=-1", "offset"),
        ("/api/events?limit=1&limit=2", "limit"),
        ("/api/events?min_risk=99999999999999999999999", "min_risk"),
        ("/api/events?reviewed=maybe", "reviewed"),
        ("/api/events?start=yesterday", "start"),
        ("/api/events?start=9999-12-31T23:59:59-05:00", "start"),
        ("/api/events?camera_id=a%00b", "camera_id"),
        ("/api/events?risk_level=extreme", "risk_level"),
        ("/api/events/99999999999", "event_id"),
        ("/api/events/abc", "event_id"),
        ("/api/alerts/not-a-uuid", "alert_id"),
        ("/api/detections?min_confidence=nan", "min_confidence"),
        ("/api/prompts/gpt5", "model"),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    api_client: TestClient, path: str, field: str
) -> None:
    response = await api_client.get(path)
    assert response.status == 400, await response.text()
    error = error_of(await response.json())
    assert error["code"] == "bad_parameter" and error["field"] == field
    assert field in error["message"]


async def test_non_utf8_escapes_in_the_url_are_not_a_server_error(
    api_client: TestClient,
) -> None:
    for path in ("/api/events?camera_id=%ff%fe", "/api/cameras/%ff%fe",
                 "/api/cameras/a%2Fb/zones", "/api/cameras/%00"):
        response = await api_client.get(path)
        assert response.status in (200, 400, 404), path


async def test_body_over_the_cap_is_413(make_client: MakeClient) -> None:
    client = await make_client({"api": {"max_body_bytes": 2048}})
    response = await client.post("/api/logs", json={"level": "INFO", "component": "ui",
                                                     "message": "x" * 4000})
    assert response.status == 413
    assert error_of(await response.json())["code"]


async def test_huge_integers_in_bodies_are_422(api_client: TestClient,
                                               db: asyncpg.Pool) -> None:
    await seed.camera(db)
    response = await api_client.post("/api/events/review", json={"ids": [10**30]})
    assert response.status == 422
    assert error_of(await response.json())["field"] == "ids[0]"
    response = await api_client.post("/api/cameras/front_door/zones", json={
        "name": "z", "coordinates": [[10**400, 0], [1, 1]]})
    assert response.status == 422


async def test_timestamps_are_iso_utc(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    camera = await (await api_client.get("/api/cameras/front_door")).json()
    assert camera["created_at"].endswith("Z") and "T" in camera["created_at"]
