"""Batch aggregation: groups a camera's detections in Redis and hands closed batches to analysis.

State lives only in the reference's keys (all with a 1 h TTL), so any number of detect
workers can add to batches and any sweeper can close them: adding and closing are each one
Lua script, which is what makes "pushed exactly once" hold with racing processes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from hsid import constants
from hsid.config import BatchConfig
from hsid.runtime import pause

log = structlog.get_logger(__name__)

# KEYS: batch:{camera_id}:current
# ARGV: new batch id, camera id, now, ttl, ids JSON
# Joins the camera's open batch, or opens one under the new id; the other keys are named
# from the batch id read inside the script. Returns {batch_id, size of the batch}.
ADD_SCRIPT = """
local batch_id = redis.call('GET', KEYS[1])
local prefix
if not batch_id then
  batch_id = ARGV[1]
  prefix = 'batch:' .. batch_id .. ':'
  redis.call('SET', KEYS[1], batch_id, 'EX', ARGV[4])
  redis.call('SET', prefix .. 'camera_id', ARGV[2], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'started_at', ARGV[3], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'detections', '[]', 'EX', ARGV[4])
else
  prefix = 'batch:' .. batch_id .. ':'
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


def batch_keys(camera_id: str, batch_id: str) -> list[str]:
    return [
        constants.BATCH_CURRENT.format(camera_id=camera_id),
        constants.BATCH_CAMERA.format(batch_id=batch_id),
        constants.BATCH_DETECTIONS.format(batch_id=batch_id),
        constants.BATCH_STARTED_AT.format(batch_id=batch_id),
        constants.BATCH_LAST_ACTIVITY.format(batch_id=batch_id),
        constants.ANALYSIS_QUEUE,
    ]


def is_fast_path(config: BatchConfig, object_type: str, confidence: float) -> bool:
    """The one rule for the fast path, shared by the batcher and the analyze worker."""
    return (
        config.fast_path_enabled
        and object_type in config.fast_path_classes
        and confidence >= config.fast_path_confidence
    )


class Batcher:
    """Adds detections to batches; `sweep` closes the ones whose time has come."""

    def __init__(self, config: BatchConfig, redis: aioredis.Redis) -> None:
        self._config = config
        self._redis = redis
        self._add = redis.register_script(ADD_SCRIPT)
        self._close = redis.register_script(CLOSE_SCRIPT)

    async def add(self, camera_id: str, detections: Sequence[NewDetection]) -> None:
        """File one image's detections: fast-path ones go straight to analysis as their own
        batch, the rest join the camera's open batch. Nothing to file opens no batch."""
        batched = []
        for detection in detections:
            if is_fast_path(self._config, detection.object_type, detection.confidence):
                await self._push_fast_path(camera_id, detection)
            else:
                batched.append(detection.id)
        if not batched:
            return
        now = time.time()
        batch_id, size = await self._add(
            keys=[constants.BATCH_CURRENT.format(camera_id=camera_id)],
            args=[str(uuid.uuid4()), camera_id, repr(now), constants.BATCH_KEY_TTL_SECONDS,
                  json.dumps(batched)],
        )
        batch_id = batch_id.decode() if isinstance(batch_id, bytes) else batch_id
        if size >= self._config.max_detections:
            await self.close(camera_id, batch_id, force=True)

    async def _push_fast_path(self, camera_id: str, detection: NewDetection) -> None:
        item = {"batch_id": str(uuid.uuid4()), "camera_id": camera_id,
                "detection_ids": [detection.id]}
        await self._redis.rpush(constants.ANALYSIS_QUEUE, json.dumps(item))
        log.info("fast_path_batch", camera=camera_id, batch_id=item["batch_id"],
                 object_type=detection.object_type, confidence=detection.confidence)

    async def close(self, camera_id: str, batch_id: str, force: bool = False) -> bool:
        """Close `batch_id` if it is due (or `force`); True only for the caller that closed it."""
        c = self._config
        closed = await self._close(
            keys=batch_keys(camera_id, batch_id),
            args=[batch_id, repr(time.time()), c.window_seconds, c.idle_seconds,
                  c.max_detections, "1" if force else "0"],
        )
        if closed:
            log.info("batch_closed", camera=camera_id, batch_id=batch_id, forced=force)
        return bool(closed)

    async def sweep(self) -> int:
        """Close every due batch; returns how many this call closed."""
        closed = 0
        async for key in self._redis.scan_iter(match="batch:*:current", count=500):
            key = key.decode() if isinstance(key, bytes) else key
            camera_id = key[len("batch:") : -len(":current")]
            batch_id = await self._redis.get(key)
            if batch_id is not None and await self.close(camera_id, batch_id.decode()):
                closed += 1
        return closed


class BatchSweeper:
    """Stage: sweeps at least every second until the daemon stops."""

    def __init__(self, batcher: Batcher, config: BatchConfig, stopping: asyncio.Event) -> None:
        self._batcher = batcher
        self._interval = config.sweep_interval_seconds
        self._stopping = stopping

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._batcher.sweep()
            await pause(self._stopping, self._interval)
