"""Health: what each stage and store is doing right now, for /api/system/health and status."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import redis.asyncio as aioredis

PROBE_TIMEOUT_SECONDS = 1.0


class StageState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    WAITING = "waiting"  # for a store that is down; resumes by itself, no crash counted
    FAILED = "failed"  # gave up after too many crashes
    STOPPED = "stopped"


@dataclass
class StageStatus:
    state: StageState = StageState.STARTING
    restarts: int = 0
    last_error: str | None = None
    since: float = 0.0


class Health:
    """Stage states and facts other parts report (detector provider, back-pressure, GPU)."""

    def __init__(self) -> None:
        self.stages: dict[str, StageStatus] = {}
        self.info: dict[str, Any] = {}

    def set_stage(self, name: str, state: StageState, error: str | None = None) -> None:
        status = self.stages.setdefault(name, StageStatus())
        if state is StageState.RESTARTING:
            status.restarts += 1
        if error is not None:
            status.last_error = error
        status.state = state
        status.since = time.time()

    def stages_ok(self) -> bool:
        settled = (StageState.RUNNING, StageState.STOPPED)
        return all(s.state in settled for s in self.stages.values())

    def stage_report(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"state": s.state.value, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self.stages.items()
        }


async def probe_database(pool: asyncpg.Pool | None) -> dict[str, Any]:
    if pool is None:
        return {"status": "down", "error": "not connected yet"}
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):  # not wait_for: see runtime.pause
            await pool.fetchval("SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
        return {"status": "down", "error": str(err) or type(err).__name__}
    return {"status": "up"}


async def probe_redis(client: aioredis.Redis | None) -> dict[str, Any]:
    if client is None:
        return {"status": "down", "error": "not connected yet"}
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await client.ping()
    except (OSError, aioredis.RedisError, TimeoutError) as err:
        return {"status": "down", "error": str(err) or type(err).__name__}
    return {"status": "up"}


async def health_report(
    health: Health, pool: asyncpg.Pool | None, client: aioredis.Redis | None
) -> tuple[bool, dict[str, Any]]:
    """Probe the stores (cheaply, with a short timeout) and combine with stage states."""
    database, redis_status = await asyncio.gather(probe_database(pool), probe_redis(client))
    healthy = (
        database["status"] == "up" and redis_status["status"] == "up" and health.stages_ok()
    )
    return healthy, {
        "status": "healthy" if healthy else "unhealthy",
        "database": database,
        "redis": redis_status,
        "stages": health.stage_report(),
        **health.info,
    }
