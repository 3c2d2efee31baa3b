"""Alert rule CRUD and alert list, acknowledge and dismiss."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests import seed

RULE = {
    "name": "Person at night", "severity": "high", "risk_threshold": 70,
    "object_types": ["person"], "camera_ids": ["front_door"], "zone_ids": [],
    "min_confidence": 0.8, "schedule": {"start": "22:00", "end": "06:00"},
    "cooldown_seconds": 600, "channels": ["webhook", "log"],
}


async def test_alert_rule_crud(api_client: TestClient) -> None:
    created = await api_client.post("/api/alert-rules", json=RULE)
    assert created.status == 201
    rule = await created.json()
    assert {k: rule[k] for k in RULE} == RULE
    assert rule["enabled"] and rule["dedup_key_template"] == "{camera_id}:{rule_id}"
    url = f"/api/alert-rules/{rule['id']}"
    assert await (await api_client.get(url)).json() == rule

    await api_client.post("/api/alert-rules", json={"name": "Any car", "severity": "low"})
    high = await (await api_client.get("/api/alert-rules?severity=high")).json()
    assert [r["id"] for r in high["items"]] == [rule["id"]] and high["count"] == 1

    patched = await (await api_client.patch(url, json={"enabled": False,
                                                       "risk_threshold": None})).json()
    assert patched["enabled"] is False and patched["risk_threshold"] is None
    assert patched["updated_at"] >= rule["updated_at"]
    assert (await api_client.delete(url)).status == 204
    assert (await api_client.get(url)).status == 404
    assert (await api_client.patch(url, json={"enabled": True})).status == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"severity": "urgent"}, "severity"),
        ({"risk_threshold": 101}, "risk_threshold"),
        ({"cooldown_seconds": -1}, "cooldown_seconds"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"object_types": "person"}, "object_types"),
        ({"camera_ids": [1]}, "camera_ids[0]"),
        ({"schedule": ["22:00"]}, "schedule"),
        ({"channels": {"webhook": True}}, "channels"),
        ({"channels": ["email"]}, "channels[0]"),
        ({"schedule": {"start": "22:00"}}, "schedule"),
        ({"schedule": {"days": ["funday"]}}, "schedule"),
        ({"schedule": {"timezone": "Nowhere/City"}}, "schedule"),
        ({"name": ""}, "name"),
        ({"risk_threshold": True}, "risk_threshold"),
    ],
)
async def test_alert_rule_validation(api_client: TestClient, change: dict, field: str) -> None:
    response = await api_client.post("/api/alert-rules", json={**RULE, **change})
    assert response.status == 422
    assert (await response.json())["error"]["field"] == field


async def test_alert_list_acknowledge_dismiss(api_client: TestClient,
                                              db: asyncpg.Pool) -> None:
    await seed.camera(db)
    event_id = await seed.event(db)
    rule_id = await seed.alert_rule(db)
    first = await seed.alert(db, event_id, rule_id)
    second = await seed.alert(db, event_id, None, status="delivered", severity="low")

    listed = await (await api_client.get(f"/api/alerts?event_id={event_id}")).json()
    assert listed["count"] == 2
    low = await (await api_client.get("/api/alerts?severity=low")).json()
    assert [a["id"] for a in low["items"]] == [str(second)]
    by_rule = await (await api_client.get(f"/api/alerts?rule_id={rule_id}")).json()
    assert [a["id"] for a in by_rule["items"]] == [str(first)]

    acked = await api_client.post(f"/api/alerts/{first}/acknowledge")
    assert acked.status == 200 and (await acked.json())["status"] == "acknowledged"
    again = await api_client.post(f"/api/alerts/{first}/acknowledge")
    assert again.status == 200
    dismissed = await api_client.post(f"/api/alerts/{first}/dismiss")
    assert (await dismissed.json())["status"] == "dismissed"
    conflict = await api_client.post(f"/api/alerts/{first}/acknowledge")
    assert conflict.status == 409
    pending = await (await api_client.get("/api/alerts?status=dismissed")).json()
    assert pending["count"] == 1
    assert (await api_client.get(f"/api/alerts/{second}")).status == 200
    missing = uuid.uuid4()
    assert (await api_client.post(f"/api/alerts/{missing}/dismiss")).status == 404
    assert (await api_client.get(f"/api/alerts/{missing}")).status == 404
