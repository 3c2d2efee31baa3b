"""Dedupe: one SHA256 claim in Redis per image content, so the same picture is processed once."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from hsid.keyspace import Keyspace
from hsid.queues import Claim

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


async def content_claim(keyspace: Keyspace, path: Path, ttl_seconds: int) -> Claim:
    """The dedupe claim of the file's content: `dedupe:<sha256>` holding the path.

    Taken by the push that queues the file (ReliableQueue.push), in the same atomic step,
    so of two racing uploads of one image exactly one is queued, and no crash or outage
    can leave a claim whose image was never queued. It expires after `ttl_seconds`.
    Raises OSError when the file cannot be read.
    """
    return Claim(keyspace.dedupe(await content_hash(path)), str(path), ttl_seconds)
