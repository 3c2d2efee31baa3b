"""The stage context: what every stage is given, in one value instead of six arguments."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis

from hsid.core.config import Config
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace
from hsid.core.outage import StoreWatch
from hsid.core.runtime import Runtime


@dataclass(frozen=True, slots=True)
class StageContext:
    """The config, the connected stores, health and the stop signal, as one stage sees them.

    A stage takes this and only what is its own beyond it (its queue, its model), so
    wiring a stage never means threading the same six values through again. `stopping` is
    the daemon's: a stage's `run` returns once it is set. `stores` tells a store outage from
    a fault (None in tests that do not need it).
    """

    config: Config
    pool: asyncpg.Pool
    redis: aioredis.Redis
    keyspace: Keyspace
    health: Health = field(default_factory=Health)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stores: StoreWatch | None = None

    @classmethod
    def of(cls, runtime: Runtime) -> StageContext:
        """The running daemon's context; raises Unavailable before the stores connect."""
        return cls(config=runtime.config, pool=runtime.require_pool(),
                   redis=runtime.require_redis(), keyspace=runtime.keyspace,
                   health=runtime.health, stopping=runtime.stopping, stores=runtime.stores)

    def with_config(self, config: Config) -> StageContext:
        """The same context with another config (a stage's own overrides)."""
        return dataclasses.replace(self, config=config)
