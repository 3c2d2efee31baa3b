"""System status: one snapshot of health, queues and GPU, published on `system_status`."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog

from hsid.core.constants import SYSTEM_STATUS_CHANNEL
from hsid.core.health import health_report
from hsid.core.keyspace import Keyspace
from hsid.core.queues import dlq_counts, queue_depths
from hsid.core.runtime import Runtime, pause

log = structlog.get_logger(__name__)

MESSAGE_TYPE = "system_status"
# A status snapshot must not wait long for a Redis that is going away: health says so.
QUEUE_READ_TIMEOUT_SECONDS = 1.0
REDIS_ERRORS = (OSError, TimeoutError, aioredis.RedisError)


async def queue_figures(
    client: aioredis.Redis | None, keyspace: Keyspace
) -> tuple[dict[str, int], dict[str, int]]:
    """(items waiting per queue, items per dead-letter queue), refreshing the QUEUE_DEPTH
    and DLQ_SIZE gauges on the way (queue_depths sets both); two empty dicts when Redis is
    not connected or does not answer within QUEUE_READ_TIMEOUT_SECONDS."""
    if client is None:
        return {}, {}
    try:
        async with asyncio.timeout(QUEUE_READ_TIMEOUT_SECONDS):
            return await queue_depths(client, keyspace), await dlq_counts(client, keyspace)
    except REDIS_ERRORS as err:
        log.debug("queue_figures_unavailable", error=str(err) or type(err).__name__)
        return {}, {}


async def build_status(runtime: Runtime) -> dict[str, Any]:
    """The `data` of a system_status message: the health report's keys (`health` holds its
    healthy/unhealthy verdict), queue depths, DLQ counts, the detector's execution
    provider and its images per second, the latest GPU figures (None when absent), uptime,
    and an ISO UTC timestamp. Never raises for an unreachable store; the report says it is down."""
    (_, report), (depths, dlq) = await asyncio.gather(
        health_report(runtime.health, runtime.pool, runtime.redis),
        queue_figures(runtime.redis, runtime.keyspace),
    )
    verdict = report.pop("status")
    gpu = runtime.health.info.get("gpu")
    return {
        "health": verdict,
        **report,
        "queues": depths,
        "dlq": dlq,
        "detector": runtime.health.info.get("detector"),
        # None in a process that does not detect (--stages without detect)
        "inference_fps": None if runtime.detector is None
        else round(runtime.detector.inference_fps, 2),
        "gpu": gpu if isinstance(gpu, dict) else None,
        "uptime_seconds": round(time.time() - runtime.started_at),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


class StatusPublisher:
    """Stage: publishes `{"type": "system_status", "data": build_status()}` every
    gpu.status_interval_seconds, for the /ws/system relay. Publishing is fire-and-forget
    (pub/sub keeps nothing), so a failed publish is logged once and simply skipped."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._failing = False

    async def run(self) -> None:
        stopping = self._runtime.stopping
        while not stopping.is_set():
            await self.publish()
            await pause(stopping, self._runtime.config.gpu.status_interval_seconds)

    async def publish(self) -> int:
        """Publish one snapshot; returns how many subscribers received it (0 on failure)."""
        message = {"type": MESSAGE_TYPE, "data": await build_status(self._runtime)}
        client = self._runtime.redis
        try:
            if client is None:
                raise ConnectionError("Redis is not connected yet")
            # default=str: a fact another stage put into health.info need not be JSON.
            text = json.dumps(message, default=str)
            channel = self._runtime.keyspace.channel(SYSTEM_STATUS_CHANNEL)
            receivers = await client.publish(channel, text)
        except REDIS_ERRORS as err:
            if not self._failing:
                log.warning("system_status_not_published", error=str(err) or type(err).__name__)
            self._failing = True
            return 0
        self._failing = False
        return int(receivers)
