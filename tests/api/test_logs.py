"""Log routes: filtered list and rate-limited frontend records."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient

RECORD = {"level": "ERROR", "message": "render failed", "component": "dashboard",
          "camera_id": "front_door", "extra": {"route": "/events"}}


async def test_frontend_records_are_stored_with_source_and_agent(
    api_client: TestClient, db: asyncpg.Pool
) -> None:
    response = await api_client.post("/api/logs", json=RECORD,
                                     headers={"User-Agent": "Firefox/130",
                                              "X-Request-ID": "req-1"})
    assert response.status == 201
    body = await response.json()
    assert body["source"] == "frontend" and body["user_agent"] == "Firefox/130"
    assert body["request_id"] == "req-1" and body["extra"] == {"route": "/events"}
    await db.execute("INSERT INTO logs (level, component, message) "
                     "VALUES ('INFO', 'detector', 'started')")
    frontend = await (await api_client.get("/api/logs?source=frontend")).json()
    assert [r["message"] for r in frontend["items"]] == ["render failed"]
    for query, count in (("level=INFO", 1), ("component=dashboard", 1),
                         ("camera_id=front_door", 1), ("start=2000-01-01", 2),
                         ("end=2000-01-01", 0), ("request_id=req-1", 1)):
        listed = await (await api_client.get(f"/api/logs?{query}")).json()
        assert listed["count"] == count, query


async def test_frontend_records_are_validated(api_client: TestClient) -> None:
    for change, field in (({"level": "LOUD"}, "level"), ({"message": "x" * 10_001}, "message"),
                          ({"component": "c" * 51}, "component"), ({"extra": [1]}, "extra"),
                          ({"source": "backend"}, "source")):
        response = await api_client.post("/api/logs", json={**RECORD, **change})
        assert response.status == 422
        assert (await response.json())["error"]["field"] == field


async def test_frontend_logs_are_rate_limited_per_client(make_client: MakeClient) -> None:
    client = await make_client({"api": {"frontend_logs_per_minute": 3}})
    statuses = [(await client.post("/api/logs", json=RECORD)).status for _ in range(3)]
    assert statuses == [201, 201, 201]
    limited = await client.post("/api/logs", json=RECORD)
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await limited.json())["error"]["code"] == "rate_limited"
