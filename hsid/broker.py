"""Redis connection: a client that has answered PING."""

from __future__ import annotations

import redis.asyncio as aioredis

from hsid.config import RedisConfig
from hsid.errors import Unavailable


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

