"""The GPU monitor: the no-GPU path everywhere, a real sample where there is a GPU."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core.config import Config, GpuConfig
from hsid.core.context import StageContext
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace
from hsid.core.metrics import REGISTRY
from hsid.core.nvml import gpu_names
from hsid.upkeep.gpu import GpuMonitor, GpuSample, sample_gpu
from tests.support import eventually

HAS_GPU = bool(gpu_names())
FAKE_SAMPLE = GpuSample(gpu_name="Fake RTX", gpu_utilization=42.0, memory_used=2048,
                        memory_total=8192, temperature=55.0, power_usage=80.5)


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_sample_is_none_without_a_gpu() -> None:
    assert sample_gpu() is None


@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU on this machine")
def test_sample_names_the_gpu() -> None:
    sample = sample_gpu()

    assert sample is not None and sample.gpu_name
    assert sample.memory_total is None or sample.memory_total > 0


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
async def test_monitor_without_a_gpu_says_so_once_and_stores_nothing(
        db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace) -> None:
    health, stopping = Health(), asyncio.Event()
    monitor = GpuMonitor(_context(db, redis, keyspace, health, stopping), lambda: 2.0)

    with capture_logs() as logs:
        task = asyncio.create_task(monitor.run())

        async def said_so() -> bool:
            return health.info.get("gpu") == "no GPU"

        await eventually(said_so, within=5.0, what='health.info["gpu"] == "no GPU"')
        await asyncio.sleep(1.2)  # a few poll intervals
        stopping.set()
        await asyncio.wait_for(task, 1.0)

    assert [e["event"] for e in logs] == ["gpu_monitoring_off"]
    assert logs[0]["log_level"] == "info" and "no NVIDIA GPU" in logs[0]["reason"]
    assert await db.fetchval("SELECT count(*) FROM gpu_stats") == 0


@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU on this machine")
async def test_monitor_with_a_gpu_stores_samples(
        db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace) -> None:
    health, stopping = Health(), asyncio.Event()
    monitor = GpuMonitor(_context(db, redis, keyspace, health, stopping), lambda: 2.0)

    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(1.2)
    stopping.set()
    await asyncio.wait_for(task, 2.0)

    rows = await db.fetch("SELECT gpu_name, inference_fps FROM gpu_stats")
    assert len(rows) >= 2 and rows[0]["gpu_name"] and rows[0]["inference_fps"] == 2.0
    assert isinstance(health.info["gpu"], dict)


async def test_monitor_stores_each_sample_of_a_gpu_and_sets_the_gauges(
        db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace) -> None:
    """The GPU path on any machine: a fake GPU stands in for NVML at the edge."""
    health, stopping = Health(), asyncio.Event()
    readings = iter([FAKE_SAMPLE, replace(FAKE_SAMPLE, power_usage=None)])
    monitor = GpuMonitor(_context(db, redis, keyspace, health, stopping), lambda: 7.5,
                         sampler=lambda: next(readings, FAKE_SAMPLE))

    task = asyncio.create_task(monitor.run())

    async def two_rows() -> bool:
        return await db.fetchval("SELECT count(*) FROM gpu_stats") >= 2

    await eventually(two_rows, within=5.0, what="two gpu_stats rows")
    stopping.set()
    await asyncio.wait_for(task, 1.0)

    rows = await db.fetch("SELECT * FROM gpu_stats ORDER BY id")
    assert {k: rows[0][k] for k in ("gpu_name", "gpu_utilization", "memory_used",
                                     "memory_total", "temperature", "power_usage",
                                     "inference_fps")} == {
        "gpu_name": "Fake RTX", "gpu_utilization": 42.0, "memory_used": 2048,
        "memory_total": 8192, "temperature": 55.0, "power_usage": 80.5, "inference_fps": 7.5}
    assert rows[1]["power_usage"] is None, "a figure the GPU cannot report stays NULL"
    assert health.info["gpu"]["gpu_name"] == "Fake RTX"
    assert REGISTRY.get_sample_value("hsid_gpu_memory_used_mb") == 2048
    assert REGISTRY.get_sample_value("hsid_gpu_utilization_percent") == 42.0


def _context(db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace, health: Health,
             stopping: asyncio.Event) -> StageContext:
    return StageContext(Config(gpu=GpuConfig(poll_seconds=0.5)), db, redis, keyspace,
                        health=health, stopping=stopping)
