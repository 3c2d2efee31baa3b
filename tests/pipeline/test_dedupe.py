"""Tests for hsid/pipeline/dedupe.py: SHA256 claims taken with their push, in the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import redis.asyncio as aioredis

from hsid.config import QueueConfig
from hsid.constants import DETECTION_QUEUE
from hsid.keyspace import Keyspace
from hsid.pipeline.dedupe import HASH_INLINE_MAX_BYTES, content_claim, content_hash
from hsid.queues import ReliableQueue

TTL_SECONDS = 300


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def queue(redis: aioredis.Redis, keyspace: Keyspace, max_length: int = 100) -> ReliableQueue:
    return ReliableQueue(redis, DETECTION_QUEUE, "w1", QueueConfig(max_length=max_length),
                         keyspace=keyspace)


def item(path: Path) -> dict[str, str]:
    return {"camera_id": "front_door", "file_path": str(path)}


async def test_new_content_is_queued_with_its_claim_path_and_ttl(
    redis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    path = write(tmp_path / "a.jpg", b"snapshot one")
    claim = await content_claim(keyspace, path, TTL_SECONDS)

    assert await queue(redis, keyspace).push(item(path), claim) is None

    assert claim.key == keyspace.dedupe(hashlib.sha256(b"snapshot one").hexdigest())
    assert await redis.get(claim.key) == str(path).encode()
    assert 0 < await redis.ttl(claim.key) <= TTL_SECONDS
    assert await queue(redis, keyspace).length() == 1


async def test_same_content_under_another_name_is_a_duplicate_and_not_queued(
    redis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.jpg", b"same bytes")
    second = write(tmp_path / "b.jpg", b"same bytes")
    q = queue(redis, keyspace)
    await q.push(item(first), await content_claim(keyspace, first, TTL_SECONDS))

    holder = await q.push(item(second), await content_claim(keyspace, second, TTL_SECONDS))

    assert holder == str(first)
    assert await q.length() == 1


async def test_racing_pushes_of_one_content_queue_it_once(
    redis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    paths = [write(tmp_path / f"{n}.jpg", b"raced") for n in range(8)]
    q = queue(redis, keyspace)
    claims = [await content_claim(keyspace, path, TTL_SECONDS) for path in paths]

    holders = await asyncio.gather(*(q.push(item(p), c) for p, c in zip(paths, claims,
                                                                         strict=True)))

    assert sum(holder is None for holder in holders) == 1
    assert await q.length() == 1


async def test_full_queue_takes_no_claim_until_there_is_room(
    redis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    q = queue(redis, keyspace, max_length=1)
    await q.push({"camera_id": "front_door", "file_path": "/elsewhere.jpg"})
    path = write(tmp_path / "waits.jpg", b"waiting for room")
    claim = await content_claim(keyspace, path, TTL_SECONDS)

    waiting = asyncio.create_task(q.push(item(path), claim))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert await redis.get(claim.key) is None  # a producer that dies now leaves no claim

    await redis.lpop(q.key)
    assert await asyncio.wait_for(waiting, 5) is None
    assert await redis.get(claim.key) == str(path).encode()


async def test_big_file_is_hashed_in_full(tmp_path: Path) -> None:
    data = os.urandom(HASH_INLINE_MAX_BYTES * 3 + 17)
    path = write(tmp_path / "big.jpg", data)

    assert await content_hash(path) == hashlib.sha256(data).hexdigest()
