"""Singleton duties: one process of a scaled-out install holds `lock:<duty>` and does it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog

from hsid.core.constants import LOCK_TTL_SECONDS
from hsid.core.errors import STORE_ERRORS
from hsid.core.keyspace import Keyspace

log = structlog.get_logger(__name__)

# Compare-and-renew / compare-and-delete: a process only ever touches its own lock.
RENEW_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@contextlib.asynccontextmanager
async def singleton_lock(client: aioredis.Redis, keyspace: Keyspace,
                         duty: str) -> AsyncIterator[bool]:
    """Hold `lock:<duty>` while the body runs; yields False (do nothing) when another
    process holds it. The TTL is short and renewed, so a crashed holder frees the duty
    within LOCK_TTL_SECONDS; a lock lost meanwhile only risks a harmless second run."""
    key, token = keyspace.lock(duty), uuid.uuid4().hex
    if not await client.set(key, token, nx=True, ex=LOCK_TTL_SECONDS):
        yield False
        return
    renewer = asyncio.create_task(_renew_lock(client, key, token))
    try:
        yield True
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        with contextlib.suppress(*STORE_ERRORS):  # unreleased, it expires by its TTL
            await client.eval(RELEASE_LOCK, 1, key, token)


async def _renew_lock(client: aioredis.Redis, key: str, token: str) -> None:
    while True:
        await asyncio.sleep(LOCK_TTL_SECONDS / 3)
        try:
            renewed = await client.eval(RENEW_LOCK, 1, key, token, LOCK_TTL_SECONDS)
        except STORE_ERRORS as err:
            log.warning("lock_not_renewed", lock=key, error=str(err) or type(err).__name__)
            continue
        if not renewed:
            log.warning("lock_lost", lock=key)
            return
