"""Cleanup and metrics routes (handlers from hsid.services) under the API's auth and audit."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient


async def test_cleanup_preview_and_run_are_audited(api_client: TestClient,
                                                   db: asyncpg.Pool) -> None:
    preview = await api_client.get("/api/system/cleanup")
    assert preview.status == 200 and (await preview.json())["dry_run"] is True
    assert (await api_client.get("/api/system/cleanup?dry_run=maybe")).status == 400
    run = await api_client.post("/api/system/cleanup")
    assert run.status == 200 and (await run.json())["dry_run"] is False
    rows = await db.fetch("SELECT action, status FROM audit_logs")
    assert [tuple(r) for r in rows] == [("cleanup_run", "success")]


async def test_metrics_are_served_and_need_a_key_when_keys_are_on(
    api_client: TestClient, make_client: MakeClient
) -> None:
    metrics = await api_client.get("/metrics")
    assert metrics.status == 200 and metrics.content_type == "text/plain"
    keyed = await make_client({"api": {"api_key_enabled": True, "api_keys": ["k"]}})
    assert (await keyed.get("/metrics")).status == 401
    assert (await keyed.get("/metrics", headers={"X-API-Key": "k"})).status == 200
