"""System routes: health, stats and the redacted configuration."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from hsid.core.keyspace import Keyspace
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


async def test_calibration_reports_dismissals_per_camera_and_level(
    api_client: TestClient, db: asyncpg.Pool,
) -> None:
    await seed.camera(db)
    for i in range(6):  # high events on the front door: five dismissed, one confirmed
        event = await seed.event(db, risk_score=70, risk_level="high", reviewed=True)
        await seed.alert(db, event, status="dismissed" if i else "acknowledged")
    await seed.event(db, risk_score=10, risk_level="low")  # no feedback
    response = await api_client.get("/api/system/calibration?days=7")
    assert response.status == 200
    report = await response.json()
    assert report["days"] == 7 and report["thresholds"]["risk_high"] == 60
    rows = {row["risk_level"]: row for row in report["cameras"]}
    assert rows["high"]["events"] == 6 and rows["high"]["dismissed"] == 5
    assert rows["high"]["confirmed"] == 1 and rows["high"]["dismissal_rate"] == round(5 / 6, 3)
    assert rows["low"]["feedback"] == 0 and rows["low"]["dismissal_rate"] is None
    [suggestion] = report["suggestions"]
    assert "risk_high from 60 to 65" in suggestion
    bad = await api_client.get("/api/system/calibration?days=0")
    assert bad.status == 400
