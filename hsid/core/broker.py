"""Redis connection: a client that has answered PING."""

from __future__ import annotations

import redis.asyncio as aioredis

from hsid.core.config import RedisConfig
from hsid.core.errors import Unavailable


async def connect_redis(config: RedisConfig, url: str | None = None) -> aioredis.Redis:
    """A client that has answered PING; raises Unavailable otherwise."""
    client = aioredis.Redis.from_url(
        url or config.url, socket_connect_timeout=5, health_check_interval=30
    )
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as err:
        await client.aclose()
        raise Unavailable(f"Redis unreachable: {err}") from err
    return client


async def state_lost(client: aioredis.Redis, marker: str) -> bool:
    """True when Redis has lost its data since `marker` was last set (it restarted empty,
    was flushed, or this is its first use); sets the marker again in the same step.

    Redis here keeps nothing on disk, so a restart empties the queues, the batches and the
    dedupe claims: whoever sees True rebuilds what it owns from PostgreSQL and the camera
    folders. SET NX: of several processes checking one marker, exactly one sees True.
    """
    return bool(await client.set(marker, "1", nx=True))
