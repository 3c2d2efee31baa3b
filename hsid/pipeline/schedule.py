"""Fair analysis scheduling: which waiting analysis job the LLM takes next.

With a real LLM on a CPU (2-17 s per analysis, BENCHMARKS.md) a first-come queue lets one
busy camera hold the LLM while another camera's batch waits behind its backlog. So the
analysis queue is taken by priority: fast-path items first (a person just appeared), then
batches, round-robin across cameras (the camera served longest ago first), and no camera
gets more than `analyzer.max_consecutive` jobs in a row while another camera's job waits.

The queue stays the reference's one `analysis_queue` list that every producer pushes to
(batcher, orphans, DLQ requeue), and its reliable-queue guarantees are kept: the choice and
the move into the worker's processing list are one Lua script, so a crash leaves the job in
the queue or in the processing list, never in neither, and recover()/return_in_flight()
work unchanged. The schedule (last camera served, how many in a row, when each camera was
last served) is a small Redis hash, shared by every analyze worker of the install.
"""

from __future__ import annotations

from redis.asyncio import Redis

from hsid.core import constants
from hsid.core.config import QueueConfig
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace
from hsid.core.outage import StoreWatch
from hsid.core.queues import Job, ReliableQueue

# How far into the queue a take looks for other cameras' jobs. An analysis takes seconds,
# decoding this many small items about a millisecond; jobs beyond it wait their turn in order.
SCAN_LIMIT = 1000

# Records that `cam` was served: the run of the last camera, and its turn (a sequence).
_NOTE_SERVED = """
local function note_served(schedule, cam)
  local last = redis.call('HGET', schedule, 'last')
  local run = tonumber(redis.call('HGET', schedule, 'run') or '0')
  if last == cam then run = run + 1 else run = 1 end
  local seq = redis.call('HINCRBY', schedule, 'seq', 1)
  redis.call('HSET', schedule, 'last', cam, 'run', run, 'served:' .. cam, seq)
end
"""

# KEYS: queue, processing list, schedule hash   ARGV: max consecutive, scan limit
# Moves the chosen job from the queue to the processing list and returns it; nil when the
# queue is empty. A malformed item is taken at once (the worker dead-letters it). Otherwise,
# per camera its first fast-path job, else its first job, is the candidate; the last camera
# served is passed over once it had `max consecutive` in a row and another camera waits;
# of the rest, fast path first, then the camera served longest ago, then queue order.
TAKE_FAIR = _NOTE_SERVED + """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #items == 0 then return false end
local cams, order, chosen = {}, {}, nil
for i, raw in ipairs(items) do
  local ok, item = pcall(cjson.decode, raw)
  if not ok or type(item) ~= 'table' or type(item.camera_id) ~= 'string' then
    chosen = i
    break
  end
  local c = cams[item.camera_id]
  if not c then
    c = {}
    cams[item.camera_id] = c
    table.insert(order, item.camera_id)
  end
  c.any = c.any or i
  if item.fast_path == true then c.fast = c.fast or i end
end
local camera = nil
if not chosen then
  local last = redis.call('HGET', KEYS[3], 'last')
  local run = tonumber(redis.call('HGET', KEYS[3], 'run') or '0')
  local tired = #order > 1 and run >= tonumber(ARGV[1])
  local best = nil
  for _, cam in ipairs(order) do
    if not (tired and cam == last) then
      local c = cams[cam]
      local key = {c.fast and 0 or 1,
                   tonumber(redis.call('HGET', KEYS[3], 'served:' .. cam) or '0'),
                   c.fast or c.any}
      if not best or key[1] < best[1] or (key[1] == best[1] and (key[2] < best[2]
          or (key[2] == best[2] and key[3] < best[3]))) then
        best = key
        camera = cam
      end
    end
  end
  chosen = best[3]
end
local raw = items[chosen]
redis.call('LREM', KEYS[1], 1, raw)
redis.call('RPUSH', KEYS[2], raw)
if camera then note_served(KEYS[3], camera) end
return raw
"""

# KEYS: schedule hash   ARGV: camera. For a job taken by the plain blocking move.
NOTE_SERVED = _NOTE_SERVED + "note_served(KEYS[1], ARGV[1])\nreturn 1\n"


class FairQueue(ReliableQueue):
    """The analysis queue, taken by priority and round-robin (see the module docstring);
    everything but `take` is ReliableQueue's."""

    def __init__(
        self, redis: Redis, name: str, worker_id: str, config: QueueConfig,
        health: Health | None = None, *, keyspace: Keyspace, stores: StoreWatch | None = None,
        max_consecutive: int = 2,
    ) -> None:
        super().__init__(redis, name, worker_id, config, health, keyspace=keyspace,
                         stores=stores)
        self.max_consecutive = max_consecutive
        self.schedule_key = keyspace.key(constants.ANALYSIS_SCHEDULE)
        self._take_fair = redis.register_script(TAKE_FAIR)
        self._note_served = redis.register_script(NOTE_SERVED)

    async def take(self, timeout: float) -> Job | None:  # noqa: ASYNC109
        """The fairest waiting job, moved into the processing list; when none waits, wait
        up to `timeout` s for the next one (then it is the only candidate, so first come is
        fair). None on timeout, and for a malformed item, which goes to the DLQ instead."""
        raw = await self._take_fair(
            keys=[self.key, self.processing_key, self.schedule_key],
            args=[self.max_consecutive, SCAN_LIMIT])
        if raw is None:
            taken = await self._blmove(timeout)
            if taken is None:
                return None
            job = await self._parse(taken)
            if job is not None:
                await self._note_served(keys=[self.schedule_key], args=[job.item.camera_id])
            return job
        return await self._parse(raw)
