"""The system_status publisher: the message a real Redis subscriber receives."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from hsid.core.config import Config
from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE, SYSTEM_STATUS_CHANNEL
from hsid.core.health import StageState
from hsid.core.metrics import REGISTRY
from hsid.core.runtime import Runtime
from hsid.upkeep.status import StatusPublisher, build_status


def running_runtime(config: Config, db: asyncpg.Pool | None,
                    redis: aioredis.Redis | None) -> Runtime:
    runtime = Runtime(config=config, stages=frozenset({"services"}), pool=db, redis=redis)
    runtime.health.set_stage("status", StageState.RUNNING)
    # A token of this test, so that another test run's publisher on the same Redis server
    # (pub/sub channels are server-wide) cannot be mistaken for ours.
    runtime.health.info["detector"] = f"CPUExecutionProvider-{uuid.uuid4().hex[:8]}"
    return runtime


async def next_status(pubsub: aioredis.client.PubSub, detector: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            decoded = json.loads(message["data"])
            if decoded["data"].get("detector") == detector:
                return decoded


async def test_published_message_has_the_system_status_shape(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    runtime = running_runtime(config, db, redis)
    keyspace = runtime.keyspace  # the run's prefix, from config
    await redis.rpush(keyspace.queue(DETECTION_QUEUE), "{}", "{}")
    await redis.rpush(keyspace.dlq(ANALYSIS_QUEUE), "{}")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keyspace.channel(SYSTEM_STATUS_CHANNEL))
    try:
        await StatusPublisher(runtime).publish()
        message = await next_status(pubsub, runtime.health.info["detector"])
    finally:
        await pubsub.aclose()

    assert message["type"] == "system_status"
    data = message["data"]
    assert data["health"] == "healthy"
    assert data["database"] == {"status": "up"} and data["redis"] == {"status": "up"}
    assert data["stages"]["status"]["state"] == "running"
    assert data["queues"] == {DETECTION_QUEUE: 2, ANALYSIS_QUEUE: 0}
    assert data["dlq"] == {DETECTION_QUEUE: 0, ANALYSIS_QUEUE: 1}
    assert data["gpu"] is None
    assert data["timestamp"].endswith("Z")
    assert datetime.fromisoformat(data["timestamp"]).utcoffset().total_seconds() == 0
    assert REGISTRY.get_sample_value("hsid_queue_depth", {"queue": DETECTION_QUEUE}) == 2
    assert REGISTRY.get_sample_value("hsid_dlq_size", {"queue": ANALYSIS_QUEUE}) == 1


async def test_gpu_figures_are_included_when_the_monitor_has_them(config: Config) -> None:
    runtime = running_runtime(config, None, None)
    runtime.health.info["gpu"] = {"gpu_name": "NVIDIA H100", "gpu_utilization": 40.0}

    status = await build_status(runtime)

    assert status.gpu == {"gpu_name": "NVIDIA H100", "gpu_utilization": 40.0}


async def test_status_without_stores_says_unhealthy_instead_of_failing(config: Config) -> None:
    status = await build_status(running_runtime(config, None, None))

    assert status.health == "unhealthy"
    assert status.database["status"] == "down" and status.redis["status"] == "down"
    assert (status.queues, status.dlq) == ({}, {})


async def test_publisher_repeats_every_interval_and_stops_promptly(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    config = config.with_overrides({"gpu": {"status_interval_seconds": 0.5}})
    runtime = running_runtime(config, db, redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe(runtime.keyspace.channel(SYSTEM_STATUS_CHANNEL))
    task = asyncio.create_task(StatusPublisher(runtime).run())
    try:
        first = await next_status(pubsub, runtime.health.info["detector"])
        second = await next_status(pubsub, runtime.health.info["detector"])
        runtime.stopping.set()
        await asyncio.wait_for(task, 1.0)
    finally:
        task.cancel()
        await pubsub.aclose()

    assert first["data"]["timestamp"] < second["data"]["timestamp"]
