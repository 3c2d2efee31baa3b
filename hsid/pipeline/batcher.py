"""Batch aggregation: groups a camera's detections in Redis and hands closed batches to analysis.

State lives only in the reference's keys (all with a 1 h TTL), so any number of detect
workers can add to batches and any sweeper can close them: adding and closing are each one
Lua script, which is what makes "pushed exactly once" hold with racing processes.

A backlog (an image captured `backlog_seconds` or more before it arrived: a camera
uploading what it took while offline, or what a start-up scan finds) never joins the
camera's live batch: it goes to the camera's backlog batch (`batch:{camera_id}:backlog`,
hsid's extension), which is cut by capture time as live batches are cut by the clock (a
capture more than `window_seconds` after the batch's first, or `idle_seconds` away from its
span, closes it and opens the next), and closed by the sweeper once no backlog image came for
`idle_seconds`. So snapshots taken hours apart never end up in one event.

Episodes: one person walking past is one story, not one event per snapshot. The first
fast-path snapshot of a camera opens an episode (`batch:{camera_id}:episode`, hsid's
extension, whose TTL of `idle_seconds` each detection of a fast-path class renews) and is
analysed at once, all of its detections in one item whose batch id is the episode id. While
the episode lasts, the camera's detections join its live batch, which carries the episode id
into its analysis item, so the follow-up event tells the whole story and alerts of the
episode share their dedup (alerts/rules.py). Opening the episode and queueing its first
item is one atomic push whose claim is the episode key (ReliableQueue.push), so racing detect
workers open one episode and queue it once, and the fast path waits for room in a full
analysis_queue like every other producer instead of overshooting its max_length.

The analysis_queue items are messages.AnalysisItem; the close script builds its item in
that model's key order (tests/core/test_messages.py decodes its real output).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
import structlog

from hsid.core import constants
from hsid.core.config import BatchConfig, QueueConfig
from hsid.core.keyspace import Keyspace
from hsid.core.messages import AnalysisItem
from hsid.core.queues import Claim, ReliableQueue

log = structlog.get_logger(__name__)

# What both add scripts begin with. ARGV: 1 new batch id, 2 camera id, 3 now, 4 ttl,
# 5 ids JSON, 6 key prefix ('<prefix>batch:'). open_batch makes the batch's keys under the
# new id and points `key` at it; append_ids adds ARGV's ids and marks the activity.
BATCH_LUA = """
local function open_batch(key)
  local batch_id = ARGV[1]
  local prefix = ARGV[6] .. batch_id .. ':'
  redis.call('SET', key, batch_id, 'EX', ARGV[4])
  redis.call('SET', prefix .. 'camera_id', ARGV[2], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'started_at', ARGV[3], 'EX', ARGV[4])
  redis.call('SET', prefix .. 'detections', '[]', 'EX', ARGV[4])
  return batch_id, prefix
end
local function append_ids(prefix)
  local ids = cjson.decode(redis.call('GET', prefix .. 'detections') or '[]')
  for _, id in ipairs(cjson.decode(ARGV[5])) do table.insert(ids, id) end
  redis.call('SET', prefix .. 'detections', cjson.encode(ids), 'EX', ARGV[4])
  redis.call('SET', prefix .. 'last_activity', ARGV[3], 'EX', ARGV[4])
  return ids
end
"""

# KEYS: <prefix>batch:{camera_id}:current
# ARGV: as BATCH_LUA, then 7 episode id ('' for none)
# Joins the camera's open batch, or opens one under the new id; the other keys are named
# from the batch id read inside the script (as Keyspace.batch names them). A batch keeps the
# first episode it is given. Returns {batch_id, size of the batch}.
ADD_SCRIPT = BATCH_LUA + """
local batch_id = redis.call('GET', KEYS[1])
local prefix
if not batch_id then
  batch_id, prefix = open_batch(KEYS[1])
else
  prefix = ARGV[6] .. batch_id .. ':'
end
local ids = append_ids(prefix)
if ARGV[7] ~= '' then
  redis.call('SET', prefix .. 'episode_id', ARGV[7], 'EX', ARGV[4], 'NX')
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', prefix .. 'camera_id', ARGV[4])
redis.call('EXPIRE', prefix .. 'started_at', ARGV[4])
redis.call('EXPIRE', prefix .. 'episode_id', ARGV[4])
return {batch_id, #ids}
"""

# KEYS: <prefix>batch:{camera_id}:backlog
# ARGV: as BATCH_LUA, then 7 captured (epoch seconds), 8 window, 9 idle
# As ADD_SCRIPT for the camera's backlog batch, which also keeps the capture-time span of
# what it holds ([first, last] in <batch>:captured). Joins it when the capture fits (within
# `idle` of the span, the span then shorter than `window`) and returns {batch_id, size, 1};
# returns {batch_id, 0, 0} when it does not: the caller closes that batch and tries again.
ADD_BACKLOG_SCRIPT = BATCH_LUA + """
local batch_id = redis.call('GET', KEYS[1])
local captured = tonumber(ARGV[7])
local first, last = captured, captured
local prefix
if batch_id then
  prefix = ARGV[6] .. batch_id .. ':'
  local span = cjson.decode(redis.call('GET', prefix .. 'captured') or '[]')
  if span[1] then
    first, last = math.min(span[1], captured), math.max(span[2], captured)
    if last - first >= tonumber(ARGV[8]) or captured - span[2] >= tonumber(ARGV[9])
        or span[1] - captured >= tonumber(ARGV[9]) then
      return {batch_id, 0, 0}
    end
  end
else
  batch_id, prefix = open_batch(KEYS[1])
end
local ids = append_ids(prefix)
redis.call('SET', prefix .. 'captured', cjson.encode({first, last}), 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', prefix .. 'camera_id', ARGV[4])
redis.call('EXPIRE', prefix .. 'started_at', ARGV[4])
return {batch_id, #ids, 1}
"""

# KEYS: current (or backlog), camera, detections, started_at, last_activity, analysis_queue,
#       captured, episode_id
# ARGV: batch id, now, window, idle, max size, force (1 = close regardless of timing)
# Closes the batch if it is still the camera's current (or backlog) one and is due; pushes
# the analysis_queue item (with the batch's episode_id, if it has one) and deletes the keys
# in the same atomic step. Returns 1 if closed. The item is messages.AnalysisItem, its keys
# written here in that model's order (cjson would not keep an order).
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
local episode = redis.call('GET', KEYS[8])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], KEYS[8])
if #ids == 0 then return 0 end
local tail = '}'
if episode then tail = ',"episode_id":' .. cjson.encode(episode) .. '}' end
redis.call('RPUSH', KEYS[6], '{"batch_id":' .. cjson.encode(ARGV[1]) .. ',"camera_id":'
  .. cjson.encode(camera) .. ',"detection_ids":' .. raw .. tail)
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

    def __init__(self, config: BatchConfig, redis: aioredis.Redis, keyspace: Keyspace, *,
                 queue: ReliableQueue | None = None) -> None:
        """`queue`: the analysis_queue the fast path pushes to (its max_length and health
        apply); by default one with the default QueueConfig and no health."""
        self._config = config
        self._redis = redis
        self._keyspace = keyspace
        self._analysis_queue = keyspace.queue(constants.ANALYSIS_QUEUE)
        self._queue = queue or ReliableQueue(redis, constants.ANALYSIS_QUEUE, "batcher",
                                             QueueConfig(), keyspace=keyspace)
        self._add = redis.register_script(ADD_SCRIPT)
        self._add_backlog = redis.register_script(ADD_BACKLOG_SCRIPT)
        self._close = redis.register_script(CLOSE_SCRIPT)
        # Set when detections join a batch here while the last sweep saw none open, so this
        # process's sweeper, asleep with nothing open, wakes to watch the batch's timers.
        self.filed = asyncio.Event()
        self.open_batches = 0  # how many batches the last sweep left open

    def is_backlog(self, captured_at: datetime | None, arrived_at: datetime | None) -> bool:
        """Taken so long before it arrived that it belongs to no live batch."""
        return (captured_at is not None and arrived_at is not None
                and (arrived_at - captured_at).total_seconds() >= self._config.backlog_seconds)

    async def add(self, camera_id: str, detections: Sequence[NewDetection], *,
                  captured_at: datetime | None = None, arrived_at: datetime | None = None,
                  fast_path: bool = True) -> str | None:
        """File one image's detections. A fast-path detection with no episode open on the
        camera opens one, and the whole image goes straight to analysis; otherwise they join
        the camera's open batch (with its episode, if one is open), or its backlog batch
        when the image was captured (`captured_at`) well before it arrived (a backlog is
        never urgent and opens no episode). `fast_path=False` (detections batched again
        long after) neither opens nor renews one. Nothing to file opens no batch. Returns
        the id of the batch they joined, None when they went to the fast path or there
        were none."""
        if not detections:
            return None
        ids = [detection.id for detection in detections]
        if captured_at is not None and self.is_backlog(captured_at, arrived_at):
            return await self._file_backlog(camera_id, ids, captured_at)
        episode = ""
        if fast_path and self._config.fast_path_enabled:
            episode, opened = await self._open_or_renew_episode(camera_id, detections)
            if opened:
                return None
        now = time.time()
        self._wake_sweeper()
        batch_id, size = await self._add(
            keys=[self._keyspace.batch_current(camera_id)],
            args=[str(uuid.uuid4()), camera_id, repr(now), constants.BATCH_KEY_TTL_SECONDS,
                  json.dumps(ids), self._keyspace.batch_id_prefix, episode],
        )
        batch_id = batch_id.decode() if isinstance(batch_id, bytes) else batch_id
        if size >= self._config.max_detections:
            await self.close(camera_id, batch_id, force=True)
        return str(batch_id)

    def _wake_sweeper(self) -> None:
        if not self.open_batches:
            self.filed.set()

    async def _file_backlog(self, camera_id: str, ids: list[int], captured_at: datetime) -> str:
        """Add to the camera's backlog batch; one the capture time does not fit is closed
        and the next opened (each step atomic, so racing workers cut it once)."""
        c = self._config
        self._wake_sweeper()
        while True:
            batch_id, size, fits = await self._add_backlog(
                keys=[self._keyspace.batch_backlog(camera_id)],
                args=[str(uuid.uuid4()), camera_id, repr(time.time()),
                      constants.BATCH_KEY_TTL_SECONDS, json.dumps(ids),
                      self._keyspace.batch_id_prefix, repr(captured_at.timestamp()),
                      c.window_seconds, c.idle_seconds],
            )
            batch_id = str(batch_id.decode() if isinstance(batch_id, bytes) else batch_id)
            if fits:
                break
            await self.close(camera_id, batch_id, force=True, backlog=True)
        if size == len(ids):
            log.info("backlog_batch_opened", camera=camera_id, batch_id=batch_id,
                     captured_at=captured_at.isoformat())
        if size >= c.max_detections:
            await self.close(camera_id, batch_id, force=True, backlog=True)
        return batch_id

    async def _open_or_renew_episode(self, camera_id: str,
                                     detections: Sequence[NewDetection]) -> tuple[str, bool]:
        """The camera's open episode id ('' for none) and whether these detections opened
        it, in which case their analysis item is queued already (the episode id is its
        batch id, so follow-ups find the fast-path event). The episode lasts `idle_seconds`
        after the last detection of a fast-path class."""
        c = self._config
        fast = [d for d in detections if is_fast_path(c, d.object_type, d.confidence)]
        renew = any(d.object_type in c.fast_path_classes for d in detections)
        key = self._keyspace.batch_episode(camera_id)
        if not fast:  # may only renew the camera's open episode
            async with self._redis.pipeline(transaction=True) as pipe:
                if renew:
                    pipe.pexpire(key, max(1, round(c.idle_seconds * 1000)))
                pipe.get(key)
                *_, episode = await pipe.execute()
            return ("" if episode is None else episode.decode()), False
        episode_id = str(uuid.uuid4())
        item = AnalysisItem(batch_id=episode_id, camera_id=camera_id,
                            detection_ids=[d.id for d in detections],
                            episode_id=episode_id, fast_path=True)
        # The episode key is the push's claim: taken with the item, or renewed when held.
        holder = await self._queue.push(item, Claim(key, episode_id, c.idle_seconds,
                                                    renew=True))
        if holder is not None:
            return holder, False
        log.info("episode_opened", camera=camera_id, episode_id=episode_id,
                 detections=len(detections), object_types=sorted({d.object_type for d in fast}),
                 confidence=max(d.confidence for d in fast))
        return episode_id, True

    async def close(self, camera_id: str, batch_id: str, force: bool = False,
                    backlog: bool = False) -> bool:
        """Close `batch_id` (the camera's live batch, or its backlog batch) if it is due (or
        `force`); True only for the caller that closed it. A backlog batch is due only by
        idleness or size: its window is kept by capture time, as it is filled."""
        c = self._config
        window = constants.BATCH_KEY_TTL_SECONDS if backlog else c.window_seconds
        closed = await self._close(
            keys=[*self._keyspace.batch(camera_id, batch_id, backlog), self._analysis_queue,
                  self._keyspace.batch_captured(batch_id),
                  self._keyspace.batch_episode_id(batch_id)],
            args=[batch_id, repr(time.time()), window, c.idle_seconds,
                  c.max_detections, "1" if force else "0"],
        )
        if closed:
            log.info("batch_closed", camera=camera_id, batch_id=batch_id, forced=force,
                     backlog=backlog)
        return bool(closed)

    async def sweep(self) -> int:
        """Close every due batch, live and backlog; returns how many this call closed
        (`open_batches` then says how many it left open)."""
        closed = seen = 0
        for backlog in (False, True):
            pattern = self._keyspace.batch_current_pattern(backlog)
            async for key in self._redis.scan_iter(match=pattern, count=500):
                key = key.decode() if isinstance(key, bytes) else key
                camera_id = self._keyspace.camera_of_batch_current(key, backlog)
                batch_id = await self._redis.get(key)
                if batch_id is None:
                    continue
                seen += 1
                batch_id = batch_id.decode() if isinstance(batch_id, bytes) else batch_id
                if await self.close(camera_id, batch_id, backlog=backlog):
                    closed += 1
        self.open_batches = seen - closed
        return closed
