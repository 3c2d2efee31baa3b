"""System status: one snapshot of health, queues and GPU, published on `system_status`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog

from hsid.core.constants import SYSTEM_STATUS_CHANNEL
from hsid.core.duty import run_duty
from hsid.core.health import health_report
from hsid.core.keyspace import Keyspace
from hsid.core.messages import SystemStatusData, SystemStatusMessage
from hsid.core.queues import dlq_counts, queue_depths
from hsid.core.runtime import Runtime

log = structlog.get_logger(__name__)

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


async def build_status(runtime: Runtime) -> SystemStatusData:
    """The `data` of a system_status message: the health report (`health` holds its
    healthy/unhealthy verdict), queue depths, DLQ counts, the detector's execution
    provider and its images per second, the latest GPU figures (None when absent), uptime,
    an ISO UTC timestamp, then the other facts of health.info. Never raises for an
    unreachable store; the report says it is down."""
    (_, report), (depths, dlq) = await asyncio.gather(
        health_report(runtime.health, runtime.pool, runtime.redis),
        queue_figures(runtime.redis, runtime.keyspace),
    )
    gpu = runtime.health.info.get("gpu")
    facts = {key: value for key, value in report.items()
             if key not in SystemStatusData.model_fields and key != "status"}
    return SystemStatusData(
        health=report["status"], database=report["database"], redis=report["redis"],
        stages=report["stages"], queues=depths, dlq=dlq,
        detector=runtime.health.info.get("detector"),
        # None in a process that does not detect (--stages without detect)
        inference_fps=None if runtime.detector is None
        else round(runtime.detector.inference_fps, 2),
        gpu=gpu if isinstance(gpu, dict) else None,
        uptime_seconds=round(time.time() - runtime.started_at),
        timestamp=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **facts,
    )


class StatusPublisher:
    """Stage: publishes a SystemStatusMessage (`{"type": "system_status", "data":
    build_status()}`) every gpu.status_interval_seconds, for the /ws/system relay.
    Publishing is fire-and-forget (pub/sub keeps nothing): a failed publish is skipped, and
    the outage said once (core/duty.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def run(self) -> None:
        await run_duty("system_status", self.publish,
                       self._runtime.config.gpu.status_interval_seconds, self._runtime.stopping)

    async def publish(self) -> None:
        """Publish one snapshot. Raises a store error (ConnectionError before Redis is
        connected) when it could not be published."""
        message = SystemStatusMessage(data=await build_status(self._runtime))
        client = self._runtime.redis
        if client is None:
            raise ConnectionError("Redis is not connected yet")
        # encode() writes str() of a fact another stage put into health.info that is not JSON.
        await client.publish(self._runtime.keyspace.channel(SYSTEM_STATUS_CHANNEL),
                             message.encode())
