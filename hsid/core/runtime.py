"""The running process's shared state: config, store connections, health, the stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import asyncpg
import redis.asyncio as aioredis

from hsid.core.config import Config
from hsid.core.errors import Unavailable
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace

if TYPE_CHECKING:
    from hsid.core.outage import StoreWatch


class InferenceRate(Protocol):
    """What the GPU monitor reads of a loaded detector: images per second, 0.0 before any."""

    @property
    def inference_fps(self) -> float: ...


@dataclass
class Runtime:
    """Passed explicitly to whatever needs the stores; no module-level globals.

    `pool` and `redis` stay None until the connect loops succeed, because the API (and its
    health route) starts first so that operators can see what hsid is waiting for.
    """

    config: Config
    stages: frozenset[str]
    health: Health = field(default_factory=Health)
    pool: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.time)
    # loaded by the detect stage; read by the GPU monitor and status
    detector: InferenceRate | None = None
    stores: StoreWatch | None = None  # set with pool and redis: tells outages from faults
    # Set by supervision when a stage is beyond repair; never by a stage itself, so only
    # SIGTERM/SIGINT mean "stop cleanly" and giving up always exits non-zero.
    given_up: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None
    keyspace: Keyspace = field(init=False)  # this install's Redis names, from config.redis

    def __post_init__(self) -> None:
        self.keyspace = Keyspace.from_config(self.config.redis)

    def give_up(self, reason: str) -> None:
        """Make the daemon exit non-zero (so systemd restarts it); the first reason wins."""
        self.failure = self.failure or reason
        self.given_up.set()

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise Unavailable("the database is not connected yet")
        return self.pool

    def require_redis(self) -> aioredis.Redis:
        if self.redis is None:
            raise Unavailable("Redis is not connected yet")
        return self.redis


def honour_cancellation() -> None:
    """Raise CancelledError when this task was asked to stop but carries on.

    redis-py (8.1 measured) now and then swallows the CancelledError of a command it was
    running: about 5 cancels in 300 of a task looping on SET came back as a normal return.
    The task's cancelling() count still says a cancel was requested, so every loop calls
    this once a turn; without it the watcher's reconcile loop once survived its TaskGroup's
    abort, and the watcher was never restarted after a database outage.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(stopping: asyncio.Event, seconds: float,
                wake: asyncio.Event | None = None) -> bool:
    """Sleep up to `seconds`, waking early on shutdown, or when `wake` is set (it is cleared
    on waking, so the next pause waits for news again); True when the daemon is stopping.
    A cancellation swallowed before the call is honoured (see honour_cancellation)."""
    honour_cancellation()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            if wake is None:
                await stopping.wait()
            else:
                async with asyncio.TaskGroup() as group:
                    waits = [group.create_task(stopping.wait()), group.create_task(wake.wait())]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for task in waits:
                        task.cancel()
    if wake is not None:
        wake.clear()
    return stopping.is_set()
