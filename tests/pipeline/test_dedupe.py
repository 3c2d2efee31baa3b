"""Tests for hsid/pipeline/dedupe.py: SHA256 claims in the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.constants import DEDUPE_PREFIX
from hsid.pipeline.dedupe import HASH_INLINE_MAX_BYTES, claim, content_hash, release

TTL_SECONDS = 300


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_new_content_is_claimed_with_path_and_ttl(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    path = write(tmp_path / "a.jpg", b"snapshot one")

    digest = await claim(redis, path, TTL_SECONDS)

    assert digest == hashlib.sha256(b"snapshot one").hexdigest()
    assert await redis.get(f"{DEDUPE_PREFIX}{digest}") == str(path).encode()
    assert 0 < await redis.ttl(f"{DEDUPE_PREFIX}{digest}") <= TTL_SECONDS


async def test_same_content_under_another_name_is_a_duplicate(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.jpg", b"same bytes")
    second = write(tmp_path / "b.jpg", b"same bytes")
    digest = await claim(redis, first, TTL_SECONDS)

    with capture_logs() as logs:
        assert await claim(redis, second, TTL_SECONDS) is None

    assert await redis.get(f"{DEDUPE_PREFIX}{digest}") == str(first).encode()
    duplicate = next(entry for entry in logs if entry["event"] == "image_duplicate")
    assert duplicate["path"] == str(second)
    assert duplicate["original"] == str(first)


async def test_racing_claims_of_one_content_have_one_winner(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    paths = [write(tmp_path / f"{n}.jpg", b"raced") for n in range(8)]

    results = await asyncio.gather(*(claim(redis, path, TTL_SECONDS) for path in paths))

    assert sum(result is not None for result in results) == 1


async def test_big_file_is_hashed_in_full(redis: aioredis.Redis, tmp_path: Path) -> None:
    data = os.urandom(HASH_INLINE_MAX_BYTES * 3 + 17)
    path = write(tmp_path / "big.jpg", data)

    assert await content_hash(path) == hashlib.sha256(data).hexdigest()
    assert await claim(redis, path, TTL_SECONDS) == hashlib.sha256(data).hexdigest()


async def test_released_claim_can_be_claimed_again(redis: aioredis.Redis, tmp_path: Path) -> None:
    path = write(tmp_path / "a.jpg", b"retry me")
    digest = await claim(redis, path, TTL_SECONDS)
    assert digest is not None

    await release(redis, digest)

    assert await claim(redis, path, TTL_SECONDS) == digest
