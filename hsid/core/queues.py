"""Reliable Redis queues and dead-letter queues: take, acknowledge, retry, recover, requeue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.asyncio import Redis

from hsid.core import metrics
from hsid.core.backoff import Backoff
from hsid.core.config import QueueConfig
from hsid.core.constants import DLQ_PREFIX, QUEUE_NAMES
from hsid.core.errors import STORE_ERRORS, InvalidInput, NotFound, PermanentError
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace
from hsid.core.messages import (
    DeadLetter,
    MalformedItem,
    QueueItem,
    decode_dead_letter,
    decode_item,
    item_from,
    original_of,
)
from hsid.core.outage import StoreWatch
from hsid.core.runtime import honour_cancellation

log = structlog.get_logger(__name__)

# A full queue is re-checked this often; short enough that a producer resumes almost as soon
# as a consumer makes room, long enough not to hammer Redis while the pipeline is saturated.
BACKPRESSURE_POLL_SECONDS = 0.2
PUSH_FULL = "\0full"  # _try_push's answer for a full queue; no claim holder looks like it
RETRY_MAX_DELAY_SECONDS = 60.0
# After a store outage a job is tried again this long after the store answers, so the
# jobs that waited do not all hit a server that is still warming up at the same instant.
OUTAGE_RETRY_SECONDS = 0.5
# An ack or DLQ write that Redis has not answered in this long will not be answered soon;
# the item then stays in the processing list and is recovered at the next start.
BOOKKEEPING_TIMEOUT_SECONDS = 10.0

# RPUSH only while the list is below its cap, so concurrent producers cannot overshoot it;
# with a claim key (KEYS[2]), only if nobody holds that claim, and the claim is taken in the
# same atomic step, so a claim never exists without its item having been queued. A held
# claim is renewed (its TTL set again) when ARGV[5] is '1'.
# KEYS: queue[, claim]  ARGV: payload, max length[, claim value, claim TTL in ms, renew]
# Returns {1} pushed, {-1} full (nothing done), {0, holder} claim already held.
PUSH_IF_ROOM = """
if KEYS[2] then
  local holder = redis.call('GET', KEYS[2])
  if holder then
    if ARGV[5] == '1' then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
    return {0, holder}
  end
end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return {-1} end
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
redis.call('RPUSH', KEYS[1], ARGV[1])
return {1}
"""

# Remove one exact DLQ entry and push its original job, or do nothing if another caller
# already took it: the LREM result decides, so an entry is requeued at most once.
REQUEUE_ENTRY = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

Handler = Callable[["Job"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Job:
    """One taken item: `raw` is exactly what Redis holds (the ack removes it by value),
    `item` what it holds, typed by its queue (messages.decode_item)."""

    queue: str
    raw: bytes
    item: QueueItem

    @property
    def crash_count(self) -> int:
        """How many times a process died with this job in flight (see ReliableQueue.recover)."""
        return self.item.crash_count


@dataclass(frozen=True, slots=True)
class Claim:
    """A Redis key that a push takes (SET NX PX) together with its item: `value` is what
    later pushes under the same key are told holds it. `renew`: a push that finds the
    claim held sets its TTL again (the batcher's episodes last while they are active)."""

    key: str
    value: str
    ttl_seconds: float
    renew: bool = False

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_seconds * 1000))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def as_bytes(reply: bytes | str) -> bytes:
    """A reply of the queue's Redis client, which returns bytes (no decode_responses:
    see ReliableQueue); redis-py's types allow str too."""
    if isinstance(reply, str):
        raise TypeError("the Redis client must not decode responses")
    return reply


async def _finish(bookkeeping: Awaitable[Any]) -> None:
    """Run an ack or DLQ write to the end even if our caller is cancelled meanwhile.

    Like arq's finish_job: a shutdown arriving mid-write waits for the write (bounded by
    BOOKKEEPING_TIMEOUT_SECONDS), then the cancellation carries on.
    """
    task = asyncio.ensure_future(asyncio.wait_for(bookkeeping, BOOKKEEPING_TIMEOUT_SECONDS))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


class ReliableQueue:
    """A Redis list consumed through a per-worker processing list, so a crash loses nothing.

    An item moves atomically from the queue into `processing:<queue>:<worker id>` when taken
    and leaves it only on ack or DLQ write; `recover()` puts leftovers back at the head.
    The client must return bytes (no decode_responses). Workers using the same worker_id
    concurrently would recover each other's in-flight items: give each its own. `name` is
    the logical queue name (logs, DLQ entries); `key` is its list under the install's prefix.
    """

    def __init__(
        self, redis: Redis, name: str, worker_id: str, config: QueueConfig,
        health: Health | None = None, *, keyspace: Keyspace, stores: StoreWatch | None = None,
    ) -> None:
        self.redis, self.name, self.worker_id = redis, name, worker_id
        self.config, self.health, self.stores = config, health, stores
        self.key = keyspace.queue(name)
        self.processing_key = keyspace.processing(name, worker_id)
        self.dlq_key = keyspace.dlq(name)
        self._push_if_room = redis.register_script(PUSH_IF_ROOM)
        self._recovered = False  # the first recover() of a process counts deaths

    async def push(self, item: QueueItem | dict[str, Any],
                   claim: Claim | None = None) -> str | None:
        """Append `item` (its encode(); a dict is taken as its queue's item, MalformedItem
        when it is not one); while the queue holds max_length items, wait.

        Back-pressure instead of trimming: the producer slows down and health says so,
        but no work is ever dropped. Without a claim, not idempotent: pushing twice queues
        twice. With one, the item is queued only if the claim is free, and the claim is
        taken with it atomically (no crash or outage can leave one without the other);
        returns the holder's value when the claim was already held, else None.
        """
        payload = item_from(self.name, item).encode()
        if (outcome := await self._try_push(payload, claim)) != PUSH_FULL:
            return outcome
        self._set_backpressure(True)
        log.warning("queue_backpressure", queue=self.name, max_length=self.config.max_length)
        started = time.monotonic()
        try:
            # Polled, not notified: the room is made by consumers in other processes.
            while True:
                await asyncio.sleep(BACKPRESSURE_POLL_SECONDS)
                if (outcome := await self._try_push(payload, claim)) != PUSH_FULL:
                    break
        finally:  # a producer cancelled while waiting must not leave health saying "full"
            self._set_backpressure(False)
        log.info("queue_backpressure_cleared", queue=self.name,
                 waited_s=round(time.monotonic() - started, 3))
        return outcome

    async def _try_push(self, payload: str, claim: Claim | None) -> str | None:
        """One attempt: None pushed, PUSH_FULL, or the claim's holder."""
        keys = [self.key]
        args: list[str | int] = [payload, self.config.max_length]
        if claim is not None:
            keys.append(claim.key)
            args += [claim.value, claim.ttl_ms, int(claim.renew)]
        status, *holder = await self._push_if_room(keys=keys, args=args)
        if status == 1:
            return None
        if status == -1:
            return PUSH_FULL
        value = holder[0]
        return value.decode() if isinstance(value, bytes) else str(value)

    def _set_backpressure(self, active: bool) -> None:
        if self.health is not None:
            self.health.info.setdefault("backpressure", {})[self.name] = active

    async def recover(self) -> int:
        """Move this worker's in-flight items back to the head of the queue, order kept.

        Call before taking. The first call of a process finds what a process that died
        (kill -9, OOM, an abort inside a model) left in flight, and counts that death in
        each item (`crash_count`, kept in Redis with the item), so a job that keeps killing
        the daemon can be told apart; later calls (a stage restarted in-process) move items
        back uncounted. The newest is moved first, so the oldest ends up at the head.
        Idempotent (a second call finds nothing). Returns how many moved.
        """
        count_deaths, self._recovered = not self._recovered, True
        count = 0
        while (raw := await self.redis.lindex(self.processing_key, -1)) is not None:
            payload: bytes | str = raw
            if count_deaths:
                try:
                    item = decode_item(self.name, raw)
                except MalformedItem:
                    pass  # moved back as it is: take() dead-letters it
                else:
                    item = item.model_copy(update={"crash_count": item.crash_count + 1})
                    log.warning("job_in_flight_at_crash", queue=self.name,
                                crash_count=item.crash_count)
                    payload = item.encode()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrem(self.processing_key, -1, raw)  # type: ignore[arg-type]  # redis-py types LREM's value as str; bytes go as is
                pipe.lpush(self.key, payload)
                await pipe.execute()
            count += 1
        log.info("queue_recovered", queue=self.name, worker=self.worker_id, count=count)
        return count

    async def return_in_flight(self) -> None:
        """Put this worker's in-flight items back at the head of the queue, uncounted.

        For a stage that stops or crashes with jobs in hand: they are not lost and not
        blamed. Best-effort: with Redis down they stay in the processing list, and the
        next `recover()` finds them.
        """
        with contextlib.suppress(*STORE_ERRORS):
            await _finish(self._move_all_back())

    async def _move_all_back(self) -> None:
        while await self.redis.lmove(self.processing_key, self.key, "RIGHT", "LEFT"):
            pass

    # `timeout` is BLMOVE's server-side wait, not a client deadline: cancelling a BLMOVE
    # from outside would drop the connection mid-command, so the ASYNC109 advice does not fit.
    async def take(self, timeout: float) -> Job | None:  # noqa: ASYNC109
        """Wait up to `timeout` s for an item and move it into the processing list.

        Returns None on timeout, and for a malformed item, which goes to the DLQ instead.
        """
        raw = await self._blmove(timeout)
        return None if raw is None else await self._parse(raw)

    async def take_batch(self, max_items: int, timeout: float) -> list[Job]:  # noqa: ASYNC109
        """Wait up to `timeout` s for one item, then add up to max_items-1 already waiting.

        Malformed items go to the DLQ and are left out, so the batch may be shorter.
        """
        first = await self._blmove(timeout)
        if first is None:
            return []
        raws = [first]
        if max_items > 1:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _ in range(max_items - 1):
                    pipe.lmove(self.key, self.processing_key, "LEFT", "RIGHT")
                raws += [raw for raw in await pipe.execute() if raw is not None]
        jobs = [await self._parse(raw) for raw in raws]
        return [job for job in jobs if job is not None]

    async def _blmove(self, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """BLMOVE from the head of the queue to the processing list, waiting up to `timeout` s
        (Redis takes fractions of a second; redis-py's types say int)."""
        raw = await self.redis.blmove(self.key, self.processing_key, timeout,  # type: ignore[arg-type]
                                      "LEFT", "RIGHT")
        return None if raw is None else as_bytes(raw)

    async def _parse(self, raw: bytes) -> Job | None:
        """The one place a taken item is decoded: a malformed one is dead-lettered with its
        reason (messages.MalformedItem) and None returned."""
        try:
            return Job(self.name, raw, decode_item(self.name, raw))
        except MalformedItem as err:
            now = _utcnow()
            await _finish(self._write_dead_letter(raw, str(err), 1, now, now))
            return None

    async def ack(self, job: Job) -> None:
        """Remove a finished job from the processing list. Idempotent."""
        await self.redis.lrem(self.processing_key, 1, job.raw)  # type: ignore[arg-type]  # redis-py types LREM's value as str; bytes go as is

    async def dead_letter(
        self, job: Job, error: str, attempt_count: int,
        first_failed_at: datetime, last_failed_at: datetime,
    ) -> None:
        """Record the job in dlq:<queue> (reference schema) and drop it from processing, atomically.

        One MULTI/EXEC, so the item is never in both lists nor in neither.
        """
        await self._write_dead_letter(job.raw, error, attempt_count,
                                      first_failed_at, last_failed_at)

    async def _write_dead_letter(
        self, raw: bytes, error: str, attempt_count: int,
        first_failed_at: datetime, last_failed_at: datetime,
    ) -> None:
        """`original_job` is the item as Redis held it (messages.original_of)."""
        entry = DeadLetter(original_job=original_of(raw), error=error,
                           attempt_count=attempt_count, first_failed_at=first_failed_at,
                           last_failed_at=last_failed_at, queue_name=self.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.dlq_key, entry.encode())
            pipe.lrem(self.processing_key, 1, raw)  # type: ignore[arg-type]  # redis-py types LREM's value as str; bytes go as is
            await pipe.execute()
        log.error("job_dead_lettered", queue=self.name, attempt=attempt_count, error=error)

    async def length(self) -> int:
        return int(await self.redis.llen(self.key))


async def process_with_retries(
    queue: ReliableQueue, job: Job, handler: Handler, config: QueueConfig
) -> bool:
    """Run `handler(job)`, retrying by exception type, then ack or dead-letter the job.

    A failure because a store is down (see StoreWatch.is_outage; needs `queue.stores`) is
    not the job's: it waits for the store, with no limit, and tries again without spending
    an attempt, so an outage never fills the DLQ. PermanentError: DLQ at once. Any other
    Exception (TransientError included): retry in place after a backoff, up to
    config.max_attempts attempts, then DLQ. The item stays in the processing list meanwhile,
    so cancellation (which propagates) or a crash loses nothing. Returns True when the job
    succeeded. Redis errors from the ack or DLQ write propagate, leaving the item for
    recovery; the handler must therefore be idempotent.
    """
    backoff = Backoff(config.retry_base_seconds, RETRY_MAX_DELAY_SECONDS)
    first_failed_at: datetime | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            await handler(job)
        except Exception as err:
            if queue.stores is not None and await queue.stores.is_outage(err):
                log.debug("job_waiting_for_store", queue=queue.name, error=str(err))
                attempt -= 1
                await queue.stores.wait_until_up()
                await asyncio.sleep(OUTAGE_RETRY_SECONDS)
                continue
            now = _utcnow()
            first_failed_at = first_failed_at or now
            permanent = isinstance(err, PermanentError)
            error = str(err) or type(err).__name__
            log.warning("job_failed", queue=queue.name, attempt=attempt, error=error,
                        error_type=type(err).__name__, permanent=permanent)
            if permanent or attempt == config.max_attempts:
                await _finish(queue.dead_letter(job, error, attempt, first_failed_at, now))
                return False
            await asyncio.sleep(backoff.next_delay())
        else:
            await _finish(queue.ack(job))
            return True


async def consume(
    queue: ReliableQueue, handler: Handler, config: QueueConfig, stopping: asyncio.Event,
    take_timeout: float = 1.0,
) -> None:
    """Recover this worker's leftovers, then take and process jobs until `stopping` is set.

    `stopping` is checked between jobs (at most take_timeout s apart when idle), so a job
    in hand is finished first; to abandon it, cancel the task instead.
    """
    await queue.recover()
    try:
        while not stopping.is_set():
            honour_cancellation()
            job = await queue.take(take_timeout)
            if job is not None:
                await process_with_retries(queue, job, handler, config)
    finally:
        await queue.return_in_flight()


def _check_queue(queue: str) -> str:
    if queue not in QUEUE_NAMES:
        raise InvalidInput(f"unknown queue {queue!r}; choose from {', '.join(QUEUE_NAMES)}",
                           field="queue")
    return queue


async def dlq_counts(redis: Redis, keyspace: Keyspace) -> dict[str, int]:
    """Items in each dead-letter queue, keyed by (logical) queue name."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in QUEUE_NAMES:
            pipe.llen(keyspace.dlq(name))
        counts = await pipe.execute()
    return dict(zip(QUEUE_NAMES, (int(n) for n in counts), strict=True))


async def dlq_items(
    redis: Redis, keyspace: Keyspace, queue: str, start: int = 0, count: int = 100
) -> list[dict[str, Any]]:
    """Up to `count` DLQ entries from position `start` (0 = oldest failure), parsed.

    Raises InvalidInput for an unknown queue or a negative start/count.
    """
    _check_queue(queue)
    if start < 0 or count < 0:
        raise InvalidInput("start and count must not be negative", field="start")
    if count == 0:
        return []
    raws = await redis.lrange(keyspace.dlq(queue), start, start + count - 1)
    return [json.loads(raw) for raw in raws]


async def dlq_requeue(
    redis: Redis, keyspace: Keyspace, queue: str, index: int | None = None
) -> int:
    """Put the DLQ entry at `index` (or every entry) back on its queue; returns how many.

    Each entry is removed and its original job pushed in one script, so concurrent calls
    never requeue an entry twice (the loser counts 0). Bypasses back-pressure: an operator's
    explicit request. Raises InvalidInput for an unknown queue, NotFound for a bad index.
    """
    key = keyspace.dlq(_check_queue(queue))
    if index is None:
        entries = await redis.lrange(key, 0, -1)
    else:
        entry = await redis.lindex(key, index) if index >= 0 else None
        if entry is None:
            raise NotFound(f"no item {index} in {DLQ_PREFIX}{queue}")
        entries = [entry]
    script = redis.register_script(REQUEUE_ENTRY)
    requeued = 0
    for reply in entries:
        entry = as_bytes(reply)
        if (payload := _requeued_payload(queue, entry)) is None:
            log.warning("dlq_entry_not_requeued", queue=queue, reason="it holds no original_job",
                        entry=entry[:200].decode("utf-8", errors="replace"))
            continue
        requeued += await script(keys=[key, keyspace.queue(queue)], args=[entry, payload])
    log.info("dlq_requeued", queue=queue, index=index, count=requeued)
    return requeued


def _requeued_payload(queue: str, entry: bytes) -> str | None:
    """What requeueing a DLQ entry pushes: its original job, as a fresh start (deaths
    counted before no longer condemn it). A malformed item (kept as its text, or an object
    that is not its queue's item) goes back unchanged, to be dead-lettered again with its
    reason. Only `original_job` is needed: an entry written by hand without the rest of the
    dead-letter fields is requeued too; one without `original_job` gives None."""
    try:
        original = decode_dead_letter(entry).original_job
    except MalformedItem:
        held = original_of(entry)
        found = held.get("original_job") if isinstance(held, dict) else None
        if not isinstance(found, dict | str):
            return None
        original = found
    text = original if isinstance(original, str) else json.dumps(
        original, separators=(",", ":"), ensure_ascii=False)
    try:
        item = decode_item(queue, text)
    except MalformedItem:
        return text
    return item.model_copy(update={"crash_count": 0}).encode()


async def dlq_clear(redis: Redis, keyspace: Keyspace, queue: str) -> int:
    """Delete every entry of dlq:<queue>; returns how many. Raises InvalidInput (unknown queue)."""
    key = keyspace.dlq(_check_queue(queue))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.llen(key)
        pipe.delete(key)
        count, _ = await pipe.execute()
    log.info("dlq_cleared", queue=queue, count=count)
    return int(count)


async def queue_depths(redis: Redis, keyspace: Keyspace) -> dict[str, int]:
    """Items waiting in each queue; also refreshes the queue-depth and DLQ-size gauges."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in QUEUE_NAMES:
            pipe.llen(keyspace.queue(name))
            pipe.llen(keyspace.dlq(name))
        lengths = [int(n) for n in await pipe.execute()]
    depths: dict[str, int] = {}
    for name, depth, dlq_size in zip(QUEUE_NAMES, lengths[::2], lengths[1::2], strict=True):
        metrics.QUEUE_DEPTH.labels(queue=name).set(depth)
        metrics.DLQ_SIZE.labels(queue=name).set(dlq_size)
        depths[name] = depth
    return depths
