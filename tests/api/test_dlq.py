"""Dead-letter queue routes over the real queues module."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from hsid.core.keyspace import Keyspace


async def dead(redis: aioredis.Redis, keyspace: Keyspace, queue: str, count: int) -> None:
    for i in range(count):
        await redis.rpush(keyspace.dlq(queue), json.dumps({
            "original_job": {"camera_id": "front_door", "file_path": f"/x/{i}.jpg",
                             "timestamp": "2026-01-01T00:00:00.000000"},
            "error": "boom", "attempt_count": 3,
            "first_failed_at": "2026-01-01T00:00:01.000000",
            "last_failed_at": "2026-01-01T00:00:05.000000", "queue_name": queue}))


async def test_counts_items_requeue_and_clear(api_client: TestClient,
                                              redis: aioredis.Redis, keyspace: Keyspace) -> None:
    await dead(redis, keyspace, "detection_queue", 3)
    await dead(redis, keyspace, "analysis_queue", 1)
    counts = await (await api_client.get("/api/dlq")).json()
    assert counts == {"detection_queue": 3, "analysis_queue": 1}

    page = await (await api_client.get("/api/dlq/detection_queue?limit=2&offset=1")).json()
    assert page["count"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["original_job"]["file_path"] == "/x/1.jpg"

    one = await api_client.post("/api/dlq/detection_queue/requeue", json={"index": 0})
    assert await one.json() == {"requeued": 1}
    assert await redis.llen(keyspace.queue("detection_queue")) == 1
    missing = await api_client.post("/api/dlq/detection_queue/requeue", json={"index": 7})
    assert missing.status == 404
    both = await api_client.post("/api/dlq/detection_queue/requeue",
                                 json={"index": 0, "all": True})
    assert both.status == 422
    everything = await api_client.post("/api/dlq/detection_queue/requeue", json={})
    assert await everything.json() == {"requeued": 2}
    assert await redis.llen(keyspace.queue("detection_queue")) == 3

    cleared = await api_client.delete("/api/dlq/analysis_queue")
    assert await cleared.json() == {"cleared": 1}
    assert await (await api_client.get("/api/dlq")).json() == {
        "detection_queue": 0, "analysis_queue": 0}
    all_true = await api_client.post("/api/dlq/analysis_queue/requeue", json={"all": True})
    assert await all_true.json() == {"requeued": 0}


async def test_unknown_queue_is_400(api_client: TestClient) -> None:
    assert (await api_client.get("/api/dlq/nope")).status == 400
    assert (await api_client.delete("/api/dlq/nope")).status == 400
    assert (await api_client.post("/api/dlq/nope/requeue", json={})).status == 400
