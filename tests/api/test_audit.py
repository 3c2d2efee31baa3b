"""Audit log: every changing call writes one row, failures included; GET /api/audit lists them."""

from __future__ import annotations

import json

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from hsid.core.keyspace import Keyspace
from tests import seed


async def audit_rows(db: asyncpg.Pool) -> list[dict]:
    return await seed.rows(db, "SELECT action, resource_type, resource_id, actor, status, "
                               "ip_address, user_agent, details FROM audit_logs ORDER BY id")


async def test_each_kind_of_change_is_audited(api_client: TestClient, db: asyncpg.Pool,
                                              redis: aioredis.Redis, keyspace: Keyspace) -> None:
    headers = {"User-Agent": "audit-test/1"}
    await seed.camera(db, "garage")
    event_id = await seed.event(db, "garage")
    alert_id = await seed.alert(db, event_id)
    await redis.rpush(keyspace.dlq("analysis_queue"),
                      json.dumps({"original_job": {"batch_id": "b"}, "error": "x"}))
    calls = [
        ("POST", "/api/cameras", {"name": "Porch"}),
        ("PATCH", "/api/cameras/porch", {"name": "Front porch"}),
        ("PATCH", f"/api/events/{event_id}", {"reviewed": True}),
        ("POST", "/api/events/review", {"ids": [event_id]}),
        ("POST", "/api/alert-rules", {"name": "r"}),
        ("POST", f"/api/alerts/{alert_id}/acknowledge", None),
        ("PUT", "/api/prompts/nemotron", {"system_prompt": "a", "version": 0}),
        ("PUT", "/api/prompts/nemotron", {"system_prompt": "b", "version": 1}),
        ("POST", "/api/prompts/nemotron/rollback/1", None),
        ("POST", "/api/dlq/analysis_queue/requeue", {}),
        ("DELETE", "/api/cameras/porch", None),
    ]
    for method, path, body in calls:
        response = await api_client.request(method, path, json=body, headers=headers)
        assert response.status < 300, (path, await response.text())
    rule_id = await db.fetchval("SELECT id FROM alert_rules")
    deleted = await api_client.delete(f"/api/alert-rules/{rule_id}")
    assert deleted.status == 204

    rows = await audit_rows(db)
    assert [(r["action"], r["resource_type"], r["resource_id"]) for r in rows] == [
        ("camera_created", "camera", "porch"),
        ("camera_updated", "camera", "porch"),
        ("event_reviewed", "event", str(event_id)),
        ("events_reviewed", "event", None),
        ("rule_created", "alert_rule", str(rule_id)),
        ("alert_acknowledged", "alert", str(alert_id)),
        ("prompt_updated", "prompt", "nemotron"),
        ("prompt_updated", "prompt", "nemotron"),
        ("prompt_rolled_back", "prompt", "nemotron"),
        ("dlq_requeued", "dlq", "analysis_queue"),
        ("camera_deleted", "camera", "porch"),
        ("rule_deleted", "alert_rule", str(rule_id)),
    ]
    assert {r["status"] for r in rows} == {"success"}
    assert {r["actor"] for r in rows} == {"anonymous"}
    assert rows[0]["ip_address"] == "127.0.0.1" and rows[0]["user_agent"] == "audit-test/1"
    assert rows[1]["details"]["fields"] == ["name"]
    assert rows[1]["details"]["status_code"] == 200
    assert rows[8]["details"]["restored"] == 1 and rows[9]["details"]["requeued"] == 1


async def test_failures_are_audited(api_client: TestClient, db: asyncpg.Pool) -> None:
    missing = await api_client.patch("/api/cameras/nope", json={"name": "x"})
    assert missing.status == 404
    invalid = await api_client.post("/api/alert-rules", json={"name": "r", "severity": "meh"})
    assert invalid.status == 422
    await api_client.put("/api/prompts/nemotron", json={"system_prompt": "a", "version": 0})
    stale = await api_client.put("/api/prompts/nemotron",
                                 json={"system_prompt": "b", "version": 0})
    assert stale.status == 409
    malformed = await api_client.post("/api/cameras", data=b"{oops",
                                      headers={"Content-Type": "application/json"})
    assert malformed.status == 400
    rows = await audit_rows(db)
    failures = [(r["action"], r["resource_id"], r["details"]["status_code"],
                 r["details"]["error"]["code"]) for r in rows if r["status"] == "failure"]
    assert failures == [
        ("camera_updated", "nope", 404, "not_found"),
        ("rule_created", None, 422, "invalid_input"),
        ("prompt_updated", "nemotron", 409, "conflict"),
        ("camera_created", None, 400, "malformed_body"),
    ]


async def test_reads_are_not_audited_and_the_list_filters(api_client: TestClient,
                                                          db: asyncpg.Pool) -> None:
    await seed.camera(db)
    await api_client.get("/api/cameras")
    await api_client.get("/api/cameras/front_door")
    assert await db.fetchval("SELECT count(*) FROM audit_logs") == 0
    await api_client.patch("/api/cameras/front_door", json={"status": "offline"})
    await api_client.patch("/api/cameras/nope", json={"status": "offline"})
    await api_client.post("/api/alert-rules", json={"name": "r"})
    for query, count in (("", 3), ("action=camera_updated", 2), ("status=failure", 1),
                         ("resource_type=alert_rule", 1), ("actor=anonymous", 3),
                         ("resource_id=front_door", 1), ("start=2000-01-01T00:00:00Z", 3),
                         ("end=2000-01-01T00:00:00Z", 0)):
        body = await (await api_client.get(f"/api/audit?{query}")).json()
        assert body["count"] == count, query
    newest = (await (await api_client.get("/api/audit?limit=1")).json())["items"][0]
    assert newest["action"] == "rule_created" and newest["timestamp"].endswith("Z")
