"""GET /metrics: the Prometheus text served by a real aiohttp app, parsed back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from hsid.api.server import build_app
from hsid.core import metrics
from hsid.core.config import Config
from hsid.core.constants import DETECTION_QUEUE
from hsid.core.keyspace import Keyspace
from hsid.core.runtime import Runtime


async def client_for(runtime: Runtime) -> TestClient:
    return TestClient(TestServer(build_app(runtime)))


@pytest.fixture
async def client(config: Config, db: asyncpg.Pool,
                 redis: aioredis.Redis) -> AsyncIterator[TestClient]:
    async with await client_for(Runtime(config=config, stages=frozenset(), pool=db,
                                        redis=redis)) as client:
        yield client


async def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one GET /metrics."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


async def test_counters_move_after_the_pipeline_increments_them(client: TestClient) -> None:
    key = ("hsid_images_received_total", (("camera", "metrics_test"),))
    before = (await scrape(client)).get(key, 0.0)

    metrics.IMAGES_RECEIVED.labels(camera="metrics_test").inc(2)
    metrics.DB_LOG_DROPPED.inc()

    after = await scrape(client)
    assert after[key] == before + 2
    assert ("hsid_db_log_records_dropped_total", ()) in after


async def test_queue_depths_are_read_from_redis_at_scrape_time(
    client: TestClient, redis: aioredis.Redis, keyspace: Keyspace
) -> None:
    await redis.rpush(keyspace.queue(DETECTION_QUEUE), "{}", "{}", "{}")

    samples = await scrape(client)

    assert samples[("hsid_queue_depth", (("queue", DETECTION_QUEUE),))] == 3


async def test_metrics_are_served_before_redis_is_connected(config: Config) -> None:
    async with await client_for(Runtime(config=config, stages=frozenset())) as client:
        samples = await scrape(client)

    assert ("hsid_db_log_records_dropped_total", ()) in samples
