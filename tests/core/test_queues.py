"""Reliable queues and dead-letter queues against the real Redis."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.commands.dlq import dlq_command
from hsid.core import metrics
from hsid.core.config import Config, QueueConfig
from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE
from hsid.core.errors import InvalidInput, NotFound, PermanentError, TransientError
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace
from hsid.core.messages import DetectionItem, decode_item
from hsid.core.queues import (
    Claim,
    Job,
    ReliableQueue,
    consume,
    dlq_clear,
    dlq_counts,
    dlq_items,
    dlq_requeue,
    process_with_retries,
    queue_depths,
)

FAST = QueueConfig(max_attempts=3, max_length=10_000, retry_base_seconds=0.01)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
DLQ_KEYS = ["original_job", "error", "attempt_count", "first_failed_at", "last_failed_at",
            "queue_name"]


def image(n: int) -> dict[str, Any]:
    return {"camera_id": "front_door", "file_path": f"/cams/front_door/{n}.jpg",
            "timestamp": "2025-12-23T10:30:00.000000"}


def typed(n: int, **extra: Any) -> DetectionItem:
    """image(n) (with `extra`) as a taken job holds it."""
    item = decode_item(DETECTION_QUEUE, json.dumps({**image(n), **extra}))
    assert isinstance(item, DetectionItem)
    return item


def detection_queue(redis: aioredis.Redis, keyspace: Keyspace, worker: str = "w1",
                    config: QueueConfig = FAST, health: Health | None = None) -> ReliableQueue:
    return ReliableQueue(redis, DETECTION_QUEUE, worker, config, health, keyspace=keyspace)


async def dead_letter_one(
    redis: aioredis.Redis, keyspace: Keyspace, n: int, error: str = "boom",
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(n))
    job = await queue.take(1)
    assert job is not None

    async def fail(_: Job) -> None:
        raise PermanentError(error)

    await process_with_retries(queue, job, fail, FAST)


async def test_push_writes_compact_json_in_reference_key_order(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = ReliableQueue(redis, ANALYSIS_QUEUE, "w1", FAST, keyspace=keyspace)
    await queue.push({"detection_ids": [1, 2], "camera_id": "yard", "batch_id": "b1"})
    assert await redis.lrange(keyspace.queue(ANALYSIS_QUEUE), 0, -1) == [
        b'{"batch_id":"b1","camera_id":"yard","detection_ids":[1,2]}'
    ]


async def test_item_taken_by_dead_worker_is_recovered_and_processed(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    dead = detection_queue(redis, keyspace)
    await dead.push(image(1))
    assert await dead.take(1) is not None
    del dead  # "killed" between take and ack
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 0

    revived = detection_queue(redis, keyspace)
    assert await revived.recover() == 1
    seen: list[Any] = []

    async def handle(job: Job) -> None:
        seen.append(job.item)

    job = await revived.take(1)
    assert job is not None
    assert await process_with_retries(revived, job, handle, FAST) is True
    assert seen == [typed(1, crash_count=1)]  # the death is counted in the item
    assert job.crash_count == 1
    assert await redis.llen(revived.processing_key) == 0


async def test_consumer_cancelled_mid_handler_loses_nothing(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(1))
    started, stopping = asyncio.Event(), asyncio.Event()

    async def hang(_: Job) -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(consume(queue, hang, FAST, stopping, take_timeout=0.1))
    await asyncio.wait_for(started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancelled (SIGTERM's grace run out): the job goes back to its queue, not blamed.
    assert await redis.llen(queue.processing_key) == 0
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 1

    done: list[Job] = []

    async def handle(job: Job) -> None:
        done.append(job)
        stopping.set()

    revived = detection_queue(redis, keyspace)
    await asyncio.wait_for(consume(revived, handle, FAST, stopping, 0.1), 5)
    assert [job.item for job in done] == [typed(1)]
    assert await redis.llen(queue.processing_key) == 0
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 0


async def test_recover_puts_in_flight_items_back_at_the_head_in_order(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    for n in range(3):
        await queue.push(image(n))
    await queue.take(1)
    await queue.take(1)
    await queue.push(image(3))
    revived = detection_queue(redis, keyspace)
    assert await revived.recover() == 2
    items = [json.loads(raw) for raw in await redis.lrange(keyspace.queue(DETECTION_QUEUE), 0, -1)]
    assert items == [{**image(0), "crash_count": 1}, {**image(1), "crash_count": 1}, image(2),
                     image(3)]
    assert await detection_queue(redis, keyspace).recover() == 0


async def test_only_the_first_recover_of_a_process_counts_a_death(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push({**image(0), "crash_count": 1})
    await queue.take(1)
    assert await queue.recover() == 1  # the process died once before: now twice
    job = await queue.take(1)
    assert job is not None and job.crash_count == 2
    assert await queue.recover() == 1  # a stage restarted in this process: not a death
    job = await queue.take(1)
    assert job is not None and job.crash_count == 2


async def test_failures_retry_then_dead_letter_with_reference_schema(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(1))
    job = await queue.take(1)
    assert job is not None
    attempts = 0

    async def flaky(_: Job) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TransientError("redis hiccup")
        raise RuntimeError("detector service unavailable")

    with capture_logs() as logs:
        assert await process_with_retries(queue, job, flaky, FAST) is False
    assert attempts == FAST.max_attempts
    assert [e["attempt"] for e in logs if e["event"] == "job_failed"] == [1, 2, 3]
    assert [e["log_level"] for e in logs if e["event"] == "job_dead_lettered"] == ["error"]

    (raw,) = await redis.lrange(keyspace.dlq(DETECTION_QUEUE), 0, -1)
    entry = json.loads(raw)
    assert list(entry) == DLQ_KEYS
    assert entry["original_job"] == image(1)
    assert entry["error"] == "detector service unavailable"
    assert entry["attempt_count"] == FAST.max_attempts
    assert entry["queue_name"] == DETECTION_QUEUE
    assert ISO_UTC.match(entry["first_failed_at"]) and ISO_UTC.match(entry["last_failed_at"])
    assert entry["first_failed_at"] < entry["last_failed_at"]
    assert await redis.llen(queue.processing_key) == 0


async def test_transient_failure_then_success_is_acked(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(1))
    job = await queue.take(1)
    assert job is not None
    calls = 0

    async def once_flaky(_: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientError("model busy")

    assert await process_with_retries(queue, job, once_flaky, FAST) is True
    assert calls == 2
    assert await redis.llen(queue.processing_key) == 0
    assert await redis.llen(keyspace.dlq(DETECTION_QUEUE)) == 0


async def test_permanent_error_dead_letters_after_one_attempt(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    await dead_letter_one(redis, keyspace, 1, "truncated JPEG")
    (entry,) = await dlq_items(redis, keyspace, DETECTION_QUEUE)
    assert entry["attempt_count"] == 1
    assert entry["error"] == "truncated JPEG"
    assert entry["first_failed_at"] == entry["last_failed_at"]


@pytest.mark.parametrize("fails", [False, True])
async def test_shutdown_during_bookkeeping_lets_the_write_finish(
    redis: aioredis.Redis, keyspace: Keyspace, fails: bool
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(1))
    job = await queue.take(1)
    assert job is not None

    async def cancelled_as_it_returns(_: Job) -> None:
        # The cancellation lands at the next await: inside the ack or the DLQ write.
        asyncio.current_task().cancel()
        if fails:
            raise PermanentError("bad image")

    with pytest.raises(asyncio.CancelledError):
        await process_with_retries(queue, job, cancelled_as_it_returns, FAST)
    assert await redis.llen(queue.processing_key) == 0
    assert await redis.llen(keyspace.dlq(DETECTION_QUEUE)) == int(fails)


@pytest.mark.parametrize("raw", [b"not json {", b"[1, 2]"])
async def test_malformed_item_goes_to_dlq(
    redis: aioredis.Redis, keyspace: Keyspace, raw: bytes,
) -> None:
    queue = detection_queue(redis, keyspace)
    await redis.rpush(keyspace.queue(DETECTION_QUEUE), raw)
    assert await queue.take(1) is None
    (entry,) = await dlq_items(redis, keyspace, DETECTION_QUEUE)
    assert list(entry) == DLQ_KEYS
    assert entry["error"].startswith("malformed queue item: ")
    assert entry["original_job"] == raw.decode()
    assert await redis.llen(queue.processing_key) == 0


async def test_requeue_one_by_index_then_all(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    for n in range(3):
        await dead_letter_one(redis, keyspace, n)
    assert await dlq_requeue(redis, keyspace, DETECTION_QUEUE, 1) == 1
    waiting = keyspace.queue(DETECTION_QUEUE)
    assert [json.loads(r) for r in await redis.lrange(waiting, 0, -1)] == [image(1)]
    assert [e["original_job"] for e in await dlq_items(redis, keyspace, DETECTION_QUEUE)] == [
        image(0), image(2)]

    assert await dlq_requeue(redis, keyspace, DETECTION_QUEUE) == 2
    assert [json.loads(r) for r in await redis.lrange(keyspace.queue(DETECTION_QUEUE), 0, -1)] == [
        image(1), image(0), image(2)]
    assert await dlq_counts(redis, keyspace) == {DETECTION_QUEUE: 0, ANALYSIS_QUEUE: 0}


async def test_requeued_poison_job_starts_afresh(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push({**image(7), "crash_count": 2})
    job = await queue.take(1)
    assert job is not None
    now = datetime.now(UTC)
    await queue.dead_letter(job, "crashed the daemon twice", 1, now, now)

    assert await dlq_requeue(redis, keyspace, DETECTION_QUEUE) == 1
    assert [json.loads(r) for r in await redis.lrange(queue.key, 0, -1)] == [image(7)]


async def test_requeue_rejects_bad_index_and_unknown_queue(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    await dead_letter_one(redis, keyspace, 1)
    with pytest.raises(NotFound):
        await dlq_requeue(redis, keyspace, DETECTION_QUEUE, 5)
    with pytest.raises(NotFound):
        await dlq_requeue(redis, keyspace, DETECTION_QUEUE, -1)
    with pytest.raises(InvalidInput):
        await dlq_requeue(redis, keyspace, "no_such_queue")


async def test_concurrent_requeues_never_duplicate(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    await dead_letter_one(redis, keyspace, 1)
    counts = await asyncio.gather(*(dlq_requeue(redis, keyspace, DETECTION_QUEUE)
                                    for _ in range(5)))
    assert sum(counts) == 1
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 1


async def test_clear_removes_every_entry(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    for n in range(2):
        await dead_letter_one(redis, keyspace, n)
    assert await dlq_clear(redis, keyspace, DETECTION_QUEUE) == 2
    assert await dlq_clear(redis, keyspace, DETECTION_QUEUE) == 0
    assert await dlq_items(redis, keyspace, DETECTION_QUEUE) == []


async def test_full_queue_blocks_producer_and_reports_backpressure(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    health = Health()
    queue = detection_queue(redis, keyspace, config=QueueConfig(max_length=2), health=health)
    await queue.push(image(0))
    await queue.push(image(1))
    with capture_logs() as logs:
        producer = asyncio.create_task(queue.push(image(2)))
        await asyncio.sleep(0.6)
        assert not producer.done()
        assert health.info["backpressure"] == {DETECTION_QUEUE: True}
        assert await queue.length() == 2

        assert await queue.take(1) is not None
        await asyncio.wait_for(producer, 2)
    assert health.info["backpressure"] == {DETECTION_QUEUE: False}
    assert [e["event"] for e in logs].count("queue_backpressure") == 1
    remaining = [json.loads(r) for r in await redis.lrange(keyspace.queue(DETECTION_QUEUE), 0, -1)]
    assert remaining == [image(1), image(2)]


async def test_take_batch_takes_what_is_waiting(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    queue = detection_queue(redis, keyspace)
    for n in range(5):
        await queue.push(image(n))
    await redis.rpush(keyspace.queue(DETECTION_QUEUE), b"garbage")
    batch = await queue.take_batch(3, 1)
    assert [job.item for job in batch] == [typed(0), typed(1), typed(2)]
    assert await redis.llen(queue.processing_key) == 3
    rest = await queue.take_batch(10, 1)
    assert [job.item for job in rest] == [typed(3), typed(4)]
    assert await redis.llen(keyspace.dlq(DETECTION_QUEUE)) == 1
    assert await queue.take_batch(3, 0.05) == []


async def test_two_workers_never_take_the_same_item(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    producer = detection_queue(redis, keyspace)
    for n in range(60):
        await producer.push(image(n))
    taken: dict[str, list[str]] = {"a": [], "b": []}

    async def drain(worker: str) -> None:
        queue = detection_queue(redis, keyspace, worker)
        while (job := await queue.take(0.05)) is not None:
            taken[worker].append(job.item.file_path)
            await asyncio.sleep(0)
            await queue.ack(job)

    await asyncio.gather(drain("a"), drain("b"))
    assert taken["a"] and taken["b"]
    assert not set(taken["a"]) & set(taken["b"])
    assert sorted(taken["a"] + taken["b"]) == sorted(image(n)["file_path"] for n in range(60))


async def test_queue_depths_updates_gauges(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    await detection_queue(redis, keyspace).push(image(1))
    await dead_letter_one(redis, keyspace, 2)
    assert await queue_depths(redis, keyspace) == {DETECTION_QUEUE: 1, ANALYSIS_QUEUE: 0}
    assert metrics.QUEUE_DEPTH.labels(queue=DETECTION_QUEUE)._value.get() == 1
    assert metrics.DLQ_SIZE.labels(queue=DETECTION_QUEUE)._value.get() == 1


async def test_dlq_command_lists_requeues_and_clears(
    redis: aioredis.Redis, keyspace: Keyspace, redis_url: str
) -> None:
    config = Config().with_overrides({"redis": {"url": redis_url, "prefix": keyspace.prefix}})
    for n in range(3):
        await dead_letter_one(redis, keyspace, n)

    out = io.StringIO()
    assert await dlq_command(config, "list", DETECTION_QUEUE, None, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"{DETECTION_QUEUE} 3", f"{ANALYSIS_QUEUE} 0"]
    assert [json.loads(line)["original_job"] for line in lines[2:]] == [image(n) for n in range(3)]

    out = io.StringIO()
    await dlq_command(config, "requeue", DETECTION_QUEUE, 0, out)
    assert out.getvalue() == f"requeued 1 item(s) from dlq:{DETECTION_QUEUE} to {DETECTION_QUEUE}\n"
    out = io.StringIO()
    await dlq_command(config, "clear", DETECTION_QUEUE, None, out)
    assert out.getvalue() == f"cleared 2 item(s) from dlq:{DETECTION_QUEUE}\n"

    await dead_letter_one(redis, keyspace, 9)
    out = io.StringIO()
    await dlq_command(config, "requeue", None, None, out)
    assert f"requeued 1 item(s) from dlq:{DETECTION_QUEUE}" in out.getvalue()
    assert await redis.llen(keyspace.queue(DETECTION_QUEUE)) == 2
    with pytest.raises(InvalidInput):
        await dlq_command(config, "clear", None, None, io.StringIO())


# --- Pushes with a claim (the watcher's dedupe) ------------------------------------------------


def claim_of(keyspace: Keyspace, content: str, holder: str) -> Claim:
    return Claim(keyspace.dedupe(content), holder, 300)


async def test_push_takes_its_claim_with_path_and_ttl(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    claim = claim_of(keyspace, "a" * 64, "/cams/front_door/1.jpg")

    assert await queue.push(image(1), claim) is None

    assert await redis.get(claim.key) == b"/cams/front_door/1.jpg"
    assert 0 < await redis.ttl(claim.key) <= 300
    assert await queue.length() == 1


async def test_push_under_a_held_claim_is_a_duplicate_and_not_queued(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    await queue.push(image(1), claim_of(keyspace, "b" * 64, "/cams/front_door/1.jpg"))

    holder = await queue.push(image(2), claim_of(keyspace, "b" * 64, "/cams/front_door/2.jpg"))

    assert holder == "/cams/front_door/1.jpg"
    assert await queue.length() == 1


async def test_racing_pushes_of_one_claim_queue_once(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace)
    holders = await asyncio.gather(*(
        queue.push(image(n), claim_of(keyspace, "c" * 64, f"/cams/{n}.jpg")) for n in range(8)))

    assert sum(holder is None for holder in holders) == 1
    assert await queue.length() == 1


async def test_full_queue_takes_no_claim_until_there_is_room(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = detection_queue(redis, keyspace, config=QueueConfig(max_length=1))
    await queue.push(image(0))
    claim = claim_of(keyspace, "d" * 64, "/cams/waits.jpg")

    waiting = asyncio.create_task(queue.push(image(1), claim))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert await redis.get(claim.key) is None  # a producer that dies now leaves no claim

    await redis.lpop(queue.key)
    assert await asyncio.wait_for(waiting, 5) is None
    assert await redis.get(claim.key) == b"/cams/waits.jpg"
