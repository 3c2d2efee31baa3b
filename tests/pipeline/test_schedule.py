"""Fair analysis scheduling: fast path first, cameras in turn, reliable-queue guarantees kept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from hsid.core.config import QueueConfig
from hsid.core.constants import ANALYSIS_QUEUE
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.pipeline.schedule import FairQueue

FAST = QueueConfig(max_attempts=3, max_length=10_000, retry_base_seconds=0.01)


def fair(redis: aioredis.Redis, keyspace: Keyspace, worker: str = "w1",
         max_consecutive: int = 2) -> FairQueue:
    return FairQueue(redis, ANALYSIS_QUEUE, worker, FAST, keyspace=keyspace,
                     max_consecutive=max_consecutive)


def fast_item(camera: str, n: int) -> dict[str, Any]:
    return {"batch_id": f"{camera}-fast-{n}", "camera_id": camera, "detection_ids": [n],
            "episode_id": f"{camera}-fast-{n}", "fast_path": True}


def batch_item(camera: str, n: int) -> dict[str, Any]:
    return {"batch_id": f"{camera}-batch-{n}", "camera_id": camera, "detection_ids": [n]}


async def take_all(queue: FairQueue) -> list[str]:
    taken = []
    while (job := await queue.take(0.01)) is not None:
        taken.append(job.item.batch_id)
        await queue.ack(job)
    return taken


async def test_another_cameras_batch_goes_before_the_tenth_fast_path_job_of_a_flood(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = fair(redis, keyspace)
    for n in range(12):
        await queue.push(fast_item("porch", n))
    await queue.push(batch_item("garden", 0))
    order = await take_all(queue)
    assert sorted(order) == sorted([f"porch-fast-{n}" for n in range(12)] + ["garden-batch-0"])
    assert order.index("garden-batch-0") == 2  # after max_consecutive (2) of the flood
    assert [o for o in order if o.startswith("porch")] == [f"porch-fast-{n}" for n in range(12)]


async def test_fast_path_goes_first_then_batches_take_turns_across_cameras(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = fair(redis, keyspace)
    for n in range(4):
        await queue.push(batch_item("drive", n))
    await queue.push(batch_item("yard", 0))
    await queue.push(batch_item("yard", 1))
    await queue.push(fast_item("porch", 0))
    assert await take_all(queue) == [
        "porch-fast-0", "drive-batch-0", "yard-batch-0", "drive-batch-1", "yard-batch-1",
        "drive-batch-2", "drive-batch-3"]  # drive alone at the end: nobody else waits


async def test_max_consecutive_bounds_a_camera_while_others_wait(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = fair(redis, keyspace, max_consecutive=3)
    for n in range(6):
        await queue.push(fast_item("porch", n))
    for n in range(2):
        await queue.push(batch_item("yard", n))
    order = [o.split("-")[0] for o in await take_all(queue)]
    assert order == ["porch"] * 3 + ["yard"] + ["porch"] * 3 + ["yard"]


async def test_a_job_taken_fairly_survives_a_crash_and_is_recovered(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    dead = fair(redis, keyspace, worker="w1")
    await dead.push(batch_item("drive", 0))
    await dead.push(fast_item("porch", 0))
    job = await dead.take(0.1)  # the worker dies holding the fast-path job
    assert job is not None and job.item.batch_id == "porch-fast-0"
    assert await redis.llen(dead.processing_key) == 1
    reborn = fair(redis, keyspace, worker="w1")
    assert await reborn.recover() == 1
    again = await reborn.take(0.1)
    assert again is not None and again.item.batch_id == "porch-fast-0"
    assert again.crash_count == 1
    await reborn.ack(again)
    assert await take_all(reborn) == ["drive-batch-0"]
    assert await redis.llen(reborn.processing_key) == 0


async def test_a_malformed_item_is_dead_lettered_not_stuck(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = fair(redis, keyspace)
    await queue.push(batch_item("drive", 0))
    await redis.rpush(queue.key, b"not json")
    assert await queue.take(0.01) is None  # taken first, and dead-lettered
    assert await take_all(queue) == ["drive-batch-0"]
    [entry] = [json.loads(raw) for raw in await redis.lrange(queue.dlq_key, 0, -1)]
    assert entry["original_job"] == "not json"


async def test_an_idle_take_waits_for_the_next_job(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = fair(redis, keyspace)
    waiting = asyncio.create_task(queue.take(2.0))
    await asyncio.sleep(0.1)
    await ReliableQueue(redis, ANALYSIS_QUEUE, "producer", FAST,
                        keyspace=keyspace).push(batch_item("drive", 7))
    job = await asyncio.wait_for(waiting, 3)
    assert job is not None and job.item.batch_id == "drive-batch-7"
    assert await redis.hget(queue.schedule_key, "last") == b"drive"
