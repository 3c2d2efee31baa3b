"""Batch aggregation: groups a camera's detections in Redis and hands closed batches to analysis.

State lives only in the reference's keys (all with a 1 h TTL), so any number of detect
workers can add to batches and any sweeper can close them: adding and closing are each one
Lua script, which is what makes "pushed exactly once" hold with racing processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis
import structlog

from hsid import constants
from hsid.broker import state_lost
from hsid.config import BatchConfig
from hsid.errors import STORE_ERRORS
from hsid.keyspace import Keyspace
from hsid.runtime import pause

log = structlog.get_logger(__name__)

# KEYS: <prefix>batch:{camera_id}:current
# ARGV: new batch id, camera id, now, ttl, ids JSON, key prefix ('<prefix>batch:')
# Joins the camera's open batch, or opens one under the new id; the other keys are named
# from the batch id read inside the script (as Keyspace.batch names them). Returns
# {batch_id, size of the batch}.
ADD_SCRIPT = """
local batch_id = redis.call('GET', KEYS[1])
local prefix
if not batch_id then
  batch_id = ARGV[1]
  prefix = ARGV[6] .. batch_id .. ':'
  redis.call('SET', KEYS[1], batch_id, 'EX', ARGV[4])
  redis.call('SET', prefix .. 'camera_id', ARGV[2], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'started_at', ARGV[3], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'detections', '[]', 'EX', ARGV[4])
else
  prefix = ARGV[6] .. batch_id .. ':'
end
local ids = cjson.decode(redis.call('GET', prefix .. 'detections') or '[]')
for _, id in ipairs(cjson.decode(ARGV[5])) do table.insert(ids, id) end
redis.call('SET', prefix .. 'detections', cjson.encode(ids), 'EX', ARGV[4])
redis.call('SET', prefix .. 'last_activity', ARGV[3], 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', prefix .. 'camera_id', ARGV[4])
redis.call('EXPIRE', prefix .. 'started_at', ARGV[4])
return {batch_id, #ids}
"""

# KEYS: current, camera, detections, started_at, last_activity, analysis_queue
# ARGV: batch id, now, window, idle, max size, force (1 = close regardless of timing)
# Closes the batch if it is still the camera's current one and is due; pushes the
# analysis_queue item and deletes the keys in the same atomic step. Returns 1 if closed.
CLOSE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local started = tonumber(redis.call('GET', KEYS[4]) or '0')
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
local raw = redis.call('GET', KEYS[3]) or '[]'
local ids = cjson.decode(raw)
local now = tonumber(ARGV[2])
local due = ARGV[6] == '1' or now - started >= tonumber(ARGV[3])
  or now - last >= tonumber(ARGV[4]) or #ids >= tonumber(ARGV[5])
if not due then return 0 end
local camera = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if #ids == 0 then return 0 end
redis.call('RPUSH', KEYS[6], '{"batch_id":' .. cjson.encode(ARGV[1]) .. ',"camera_id":'
  .. cjson.encode(camera) .. ',"detection_ids":' .. raw .. '}')
return 1
"""


@dataclass(frozen=True, slots=True)
class NewDetection:
    """What the batcher needs of a stored detection."""

    id: int
    object_type: str
    confidence: float


def is_fast_path(config: BatchConfig, object_type: str, confidence: float) -> bool:
    """The one rule for the fast path, shared by the batcher and the analyze worker."""
    return (
        config.fast_path_enabled
        and object_type in config.fast_path_classes
        and confidence >= config.fast_path_confidence
    )


class Batcher:
    """Adds detections to batches; `sweep` closes the ones whose time has come."""

    def __init__(self, config: BatchConfig, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self._config = config
        self._redis = redis
        self._keyspace = keyspace
        self._analysis_queue = keyspace.queue(constants.ANALYSIS_QUEUE)
        self._add = redis.register_script(ADD_SCRIPT)
        self._close = redis.register_script(CLOSE_SCRIPT)

    async def add(self, camera_id: str, detections: Sequence[NewDetection]) -> str | None:
        """File one image's detections: fast-path ones go straight to analysis as their own
        batch, the rest join the camera's open batch. Nothing to file opens no batch.
        Returns the id of the batch the others joined, None when there were none."""
        batched = []
        for detection in detections:
            if is_fast_path(self._config, detection.object_type, detection.confidence):
                await self._push_fast_path(camera_id, detection)
            else:
                batched.append(detection.id)
        if not batched:
            return None
        now = time.time()
        batch_id, size = await self._add(
            keys=[self._keyspace.batch_current(camera_id)],
            args=[str(uuid.uuid4()), camera_id, repr(now), constants.BATCH_KEY_TTL_SECONDS,
                  json.dumps(batched), self._keyspace.batch_id_prefix],
        )
        batch_id = batch_id.decode() if isinstance(batch_id, bytes) else batch_id
        if size >= self._config.max_detections:
            await self.close(camera_id, batch_id, force=True)
        return str(batch_id)

    async def _push_fast_path(self, camera_id: str, detection: NewDetection) -> None:
        item = {"batch_id": str(uuid.uuid4()), "camera_id": camera_id,
                "detection_ids": [detection.id]}
        await self._redis.rpush(self._analysis_queue, json.dumps(item))
        log.info("fast_path_batch", camera=camera_id, batch_id=item["batch_id"],
                 object_type=detection.object_type, confidence=detection.confidence)

    async def close(self, camera_id: str, batch_id: str, force: bool = False) -> bool:
        """Close `batch_id` if it is due (or `force`); True only for the caller that closed it."""
        c = self._config
        closed = await self._close(
            keys=[*self._keyspace.batch(camera_id, batch_id), self._analysis_queue],
            args=[batch_id, repr(time.time()), c.window_seconds, c.idle_seconds,
                  c.max_detections, "1" if force else "0"],
        )
        if closed:
            log.info("batch_closed", camera=camera_id, batch_id=batch_id, forced=force)
        return bool(closed)

    async def sweep(self) -> int:
        """Close every due batch; returns how many this call closed."""
        closed = 0
        pattern = self._keyspace.batch_current_pattern()
        async for key in self._redis.scan_iter(match=pattern, count=500):
            key = key.decode() if isinstance(key, bytes) else key
            camera_id = self._keyspace.camera_of_batch_current(key)
            batch_id = await self._redis.get(key)
            if batch_id is not None and await self.close(camera_id, batch_id.decode()):
                closed += 1
        return closed


class BatchSweeper:
    """Stage: sweeps at least every second until the daemon stops.

    It also notices Redis coming back empty (its `reconciled:batches` marker gone, looked for
    at start and every RECONCILE_CHECK_SECONDS): the open batches and queued analysis jobs
    went with it, so the detections of the last `lookback_hours` that belong to no event are
    batched again (orphans.py). Only the process that sets the marker again does it.
    """

    def __init__(self, batcher: Batcher, config: BatchConfig, stopping: asyncio.Event, *,
                 pool: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
                 lookback_hours: float) -> None:
        self._batcher = batcher
        self._config = config
        self._interval = config.sweep_interval_seconds
        self._stopping = stopping
        self._pool = pool
        self._redis = redis
        self._marker = keyspace.key(f"{constants.RECONCILED_PREFIX}batches")
        self._lookback = timedelta(hours=lookback_hours)

    async def run(self) -> None:
        next_check = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_check:
                await self._reconcile()
                next_check = time.monotonic() + constants.RECONCILE_CHECK_SECONDS
            await self._batcher.sweep()
            await pause(self._stopping, self._interval)

    async def _reconcile(self) -> None:
        """Batch the orphans again if Redis lost its state; a failure hands the duty back."""
        from hsid.pipeline.orphans import rebatch_orphans  # orphans builds on this module

        if not await state_lost(self._redis, self._marker):
            return
        log.info("batch_state_missing", lookback_hours=self._lookback.total_seconds() / 3600)
        try:
            count = await rebatch_orphans(self._pool, self._batcher, self._config,
                                          datetime.now(UTC) - self._lookback)
        except STORE_ERRORS as err:  # PostgreSQL away: the next look tries again
            await self._give_back_marker()
            log.warning("orphans_not_rebatched", error=str(err) or type(err).__name__)
            return
        except BaseException:
            await self._give_back_marker()
            raise
        # Detections found here were stranded (Redis restarted empty, or a crash came before
        # batching them): worth a warning. A first start usually finds none.
        (log.warning if count else log.info)("batch_state_reconciled", rebatched=count)

    async def _give_back_marker(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):  # Redis away too: it comes back without it
            await self._redis.delete(self._marker)
