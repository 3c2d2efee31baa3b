"""Dedupe: one SHA256 claim in Redis per image content, so the same picture is processed once."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from hsid.constants import DEDUPE_PREFIX

log = structlog.get_logger(__name__)

# Snapshots under this size hash faster than a thread hand-off; bigger files go to a thread
# so that the event loop never waits on disk reads.
HASH_INLINE_MAX_BYTES = 256 * 1024
HASH_CHUNK_BYTES = 1024 * 1024


def file_sha256(path: Path) -> str:
    """Hex SHA256 of the file's content; blocking."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


async def content_hash(path: Path) -> str:
    """Hex SHA256 of the file, read in a worker thread when the file is big."""
    if os.stat(path).st_size <= HASH_INLINE_MAX_BYTES:
        return file_sha256(path)
    return await asyncio.to_thread(file_sha256, path)


async def claim(redis: aioredis.Redis, path: Path, ttl_seconds: int) -> str | None:
    """Claim the file's content: its hash when it is new, None when it was seen within the TTL.

    `dedupe:<sha256>` is set to the path with SET NX, so of two racing uploads of one image
    exactly one wins. The claim expires after `ttl_seconds`.
    """
    digest = await content_hash(path)
    # NX with GET (Redis >= 7.0) answers "who had it" in the same round trip.
    first = await redis.set(f"{DEDUPE_PREFIX}{digest}", str(path), nx=True, ex=ttl_seconds,
                            get=True)
    if first is None:
        return digest
    original = first.decode() if isinstance(first, bytes) else first
    log.info("image_duplicate", path=str(path), original=original, sha256=digest)
    return None


async def release(redis: aioredis.Redis, digest: str) -> None:
    """Drop a claim whose image could not be queued, so that a later retry is not a duplicate."""
    await redis.delete(f"{DEDUPE_PREFIX}{digest}")
