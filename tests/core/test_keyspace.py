"""Keyspace: the reference's names without a prefix, and every key hsid writes under one."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

from hsid.core.config import BatchConfig, QueueConfig
from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE
from hsid.core.errors import PermanentError
from hsid.core.keyspace import Keyspace
from hsid.core.locks import singleton_lock
from hsid.core.queues import (
    Claim,
    Job,
    ReliableQueue,
    dlq_counts,
    dlq_requeue,
    process_with_retries,
)
from hsid.pipeline.batcher import Batcher, NewDetection

FAST = QueueConfig(max_attempts=1, retry_base_seconds=0.01)


def test_without_a_prefix_the_names_are_the_references() -> None:
    keys = Keyspace()
    assert keys.queue(DETECTION_QUEUE) == "detection_queue"
    assert keys.dlq(ANALYSIS_QUEUE) == "dlq:analysis_queue"
    assert keys.processing(DETECTION_QUEUE, "h:detect") == "processing:detection_queue:h:detect"
    assert keys.dedupe("ab12") == "dedupe:ab12"
    assert keys.lock("cleanup") == "lock:cleanup"
    assert keys.channel("security_events") == "security_events"
    assert keys.batch("porch", "b1") == ["batch:porch:current", "batch:b1:camera_id",
                                         "batch:b1:detections", "batch:b1:started_at",
                                         "batch:b1:last_activity"]
    assert keys.batch_id_prefix == "batch:"
    assert keys.batch_current_pattern() == "batch:*:current"


def test_a_prefix_goes_before_every_name_and_is_matched_literally() -> None:
    keys = Keyspace("site[1]*:")
    assert keys.queue(DETECTION_QUEUE) == "site[1]*:detection_queue"
    assert keys.lock("notify") == "site[1]*:lock:notify"
    assert keys.batch_id_prefix == "site[1]*:batch:"
    assert keys.batch_current_pattern() == r"site\[1\]\*:batch:*:current"
    assert keys.camera_of_batch_current(keys.batch_current("cam:1")) == "cam:1"


async def test_every_key_hsid_writes_carries_the_prefix(
    redis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    """Pushes (one with a dedupe claim), a take, a dead letter, a batch and a lock: then
    nothing in the database is outside the install's prefix, and each kind is there."""
    queue = ReliableQueue(redis, DETECTION_QUEUE, "w1", FAST, keyspace=keyspace)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"snapshot")
    for n in range(3):  # one dead-lettered, one left in flight, one waiting
        claim = Claim(keyspace.dedupe("0" * 64), str(image), 300) if n == 1 else None
        assert await queue.push({"camera_id": "porch", "file_path": f"/x/{n}.jpg",
                                 "timestamp": "2025-12-23T10:30:00.000000"}, claim) is None
    job = await queue.take(1)
    assert job is not None

    async def fail(_: Job) -> None:
        raise PermanentError("bad image")

    await process_with_retries(queue, job, fail, FAST)
    assert await queue.take(1) is not None  # stays in flight: processing:<queue>:<worker>
    assert await dlq_counts(redis, keyspace) == {DETECTION_QUEUE: 1, ANALYSIS_QUEUE: 0}
    batcher = Batcher(BatchConfig(), redis, keyspace)
    await batcher.add("porch", [NewDetection(1, "car", 0.6), NewDetection(2, "person", 0.99)])

    async with singleton_lock(redis, keyspace, "cleanup") as held:
        assert held
        names = {key.decode() async for key in redis.scan_iter(match="*")}
    assert names and all(name.startswith(keyspace.prefix) for name in names), names
    kinds = {name[len(keyspace.prefix):].split(":")[0] for name in names}
    assert kinds == {"detection_queue", "analysis_queue", "dlq", "processing", "dedupe",
                     "batch", "lock"}
    assert await dlq_requeue(redis, keyspace, DETECTION_QUEUE) == 1
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 2


async def test_installs_sharing_a_database_keep_their_queues_batches_and_locks(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    a, b = Keyspace(redis_prefix + "a:"), Keyspace(redis_prefix + "b:")
    config = BatchConfig.model_construct(window_seconds=0, idle_seconds=0)  # below the minimum
    await Batcher(config, redis, a).add("porch", [NewDetection(1, "car", 0.6)])
    assert await Batcher(config, redis, b).sweep() == 0  # b never closes a's batch
    assert await Batcher(config, redis, a).sweep() == 1
    [item] = [json.loads(raw) for raw in await redis.lrange(a.queue(ANALYSIS_QUEUE), 0, -1)]
    assert item["detection_ids"] == [1]
    assert await redis.llen(b.queue(ANALYSIS_QUEUE)) == 0

    async with singleton_lock(redis, a, "notify") as held_a, \
            singleton_lock(redis, b, "notify") as held_b:
        assert held_a and held_b  # one notifier per install, not one per Redis


def test_backlog_batches_have_names_of_their_own_under_the_prefix() -> None:
    assert Keyspace().batch("porch", "b1", backlog=True)[0] == "batch:porch:backlog"
    assert Keyspace().batch_captured("b1") == "batch:b1:captured"
    keys = Keyspace("site[1]*:")
    assert keys.batch_current_pattern(backlog=True) == r"site\[1\]\*:batch:*:backlog"
    assert keys.camera_of_batch_current(keys.batch_backlog("cam:1"), backlog=True) == "cam:1"
