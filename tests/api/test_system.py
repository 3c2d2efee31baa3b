"""System routes: health, stats and the redacted configuration."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from hsid.keyspace import Keyspace
from tests import seed
from tests.api.conftest import MakeClient


async def test_stats_counts_queues_and_detector(make_client: MakeClient, db: asyncpg.Pool,
                                                redis: aioredis.Redis, keyspace: Keyspace) -> None:
    client = await make_client()
    await seed.camera(db)
    detection = await seed.detection(db)
    await seed.event(db, detection_ids=[detection])
    await seed.event(db, reviewed=True)
    await redis.rpush(keyspace.queue("detection_queue"), "{}", "{}")
    await redis.rpush(keyspace.dlq("analysis_queue"), "{}")
    stats = await (await client.get("/api/system/stats")).json()
    assert stats["counts"]["cameras"] == 1 and stats["counts"]["detections"] == 1
    assert stats["counts"]["events"] == 2 and stats["counts"]["unreviewed_events"] == 1
    assert stats["queues"] == {"detection_queue": 2, "analysis_queue": 0}
    assert stats["dlq"] == {"detection_queue": 0, "analysis_queue": 1}
    assert stats["uptime_seconds"] >= 0 and stats["started_at"].endswith("Z")


async def test_config_is_redacted(make_client: MakeClient) -> None:
    client = await make_client({"api": {"api_keys": ["admin:s3cret"]}})
    body = await client.get("/api/system/config")
    text = await body.text()
    assert body.status == 200 and "s3cret" not in text
    config = await body.json()
    assert config["api"]["api_keys"] == ["***"] and config["api"]["port"] > 0


async def test_health_is_cheap_and_open(api_client: TestClient) -> None:
    response = await api_client.get("/api/system/health")
    assert response.status == 200
    body = await response.json()
    assert body["database"]["status"] == "up" and body["redis"]["status"] == "up"
