"""The private PostgreSQL and redis-server of a fault scenario, and what they say: the
figures a scenario is judged by, and which jobs are in flight."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from hsid.embedded import EmbeddedPostgres, EmbeddedRedis


@dataclass(frozen=True, slots=True)
class Figures:
    """What the stores say after (or during) a scenario, for the uploads of `sent`."""

    sent: int
    stored: int  # uploads with detection rows
    events: int
    stored_twice: int  # uploads whose detections were stored by more than one run
    in_several_events: int  # detections listed by more than one event
    unanalysed: int  # detections in no event
    dead_letters: int
    waiting: int  # items in queues and processing lists, open batches

    @property
    def lost_images(self) -> int:
        return self.sent - self.stored

    @property
    def lost(self) -> int:
        return self.lost_images + self.unanalysed

    @property
    def duplicates(self) -> int:
        return self.stored_twice + self.in_several_events


def item_ids(raw: bytes | str) -> set[str]:
    """What identifies a queue item across retries and recoveries (which may rewrite its
    JSON, adding a crash count say): its file_path or batch_id, wherever it sits."""
    try:
        item: Any = json.loads(raw)
    except ValueError:
        return {raw.decode(errors="replace") if isinstance(raw, bytes) else raw}
    found: set[str] = set()
    stack = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            found.update(str(value[k]) for k in ("file_path", "batch_id") if k in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class Stores:
    """The private PostgreSQL and redis-server, and the lab's own view of what they hold.

    Key names are matched by glob with anything in front, so a `redis.prefix` (empty here)
    changes nothing."""

    def __init__(self, root: Path) -> None:
        self.pg = EmbeddedPostgres(root / "pg")
        self.redis_server = EmbeddedRedis(root / "redis")
        self.dsn = self.redis_url = ""
        self.redis: aioredis.Redis | None = None
        self.dead_letters_flushed = 0  # DLQ entries lost when Redis came back empty

    async def start(self) -> None:
        self.dsn = await self.pg.start()
        self.redis_url = await self.redis_server.start()
        self.redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=5)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.redis_server.stop()
        await self.pg.stop()

    async def restart_redis_empty(self, down_seconds: float) -> None:
        """Stop redis-server, forget everything it held, start it again after a while: a
        Redis that keeps nothing on disk, restarted."""
        self.dead_letters_flushed += await self.dead_letters()
        await self.redis_server.stop()
        for name in ("appendonlydir", "dump.rdb"):
            target = self.redis_server.root / name
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
        await asyncio.sleep(down_seconds)
        await self.redis_server.start()

    async def _lists(self, pattern: str) -> dict[str, list[bytes]]:
        assert self.redis is not None
        keys = [k for k in await self.redis.keys(pattern)
                if await self.redis.type(k) in (b"list", "list")]
        return {_text(k): await self.redis.lrange(k, 0, -1) for k in keys}

    async def dead_letters(self) -> int:
        try:
            return sum(len(v) for v in (await self._lists("*dlq:*")).values())
        except (aioredis.RedisError, OSError):
            return 0

    async def in_flight(self, kind: str) -> set[str]:
        """Ids of what is in flight: `detection` or `analysis` items in processing lists,
        or `batch`, the camera batches open now."""
        assert self.redis is not None
        if kind == "batch":
            keys = await self.redis.keys("*batch:*:current")
            return {_text(v) for v in await self.redis.mget(keys) if v} if keys else set()
        items = await self._lists(f"*processing:{kind}_queue:*")
        return {i for raws in items.values() for raw in raws for i in item_ids(raw)}

    async def in_flight_jobs(self) -> set[str]:
        return await self.in_flight("detection") | await self.in_flight("analysis")

    def takes(self, kind: str) -> TakeWatch:
        assert self.redis is not None
        return TakeWatch(self.redis, kind)

    async def waiting(self) -> int:
        """Queue items, in-flight items and open batches: zero once the pipeline is idle."""
        assert self.redis is not None
        lists = await self._lists("*")
        queued = sum(len(v) for k, v in lists.items() if "dlq:" not in k
                     and (k.endswith("_queue") or "processing:" in k))
        return queued + len(await self.redis.keys("*batch:*:current"))

    async def figures(self, sent: list[Path]) -> Figures:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            detections = await conn.fetch("SELECT id, file_path, detected_at FROM detections")
            events = await conn.fetch("SELECT detection_ids FROM events")
        finally:
            await conn.close()
        runs: dict[str, Counter] = {}
        for row in detections:
            runs.setdefault(row["file_path"], Counter())[row["detected_at"]] += 1
        listed = Counter(i for e in events for i in json.loads(e["detection_ids"] or "[]"))
        ids = {row["id"] for row in detections}
        return Figures(
            sent=len(sent),
            stored=sum(1 for p in sent if str(p) in runs),
            events=len(events),
            # A second run of an image stores rows at another time: more rows than its first.
            stored_twice=sum(1 for c in runs.values()
                             if sum(c.values()) > c[min(c)]),
            in_several_events=sum(1 for n in listed.values() if n > 1),
            unanalysed=len(ids - set(listed)),
            dead_letters=await self.dead_letters() + self.dead_letters_flushed,
            waiting=await self.waiting(),
        )


class TakeWatch:
    """Workers taking `kind` jobs, seen as pushes onto its processing lists (keyspace
    notifications). Polling cannot tell a job taken again from the entry a killed process
    left in the list, which stays there until the next start recovers it."""

    def __init__(self, redis: aioredis.Redis, kind: str) -> None:
        self._redis = redis
        self._pattern = f"__keyspace@*__:*processing:{kind}_queue:*"
        self._pubsub = redis.pubsub()

    async def __aenter__(self) -> TakeWatch:
        await self._redis.config_set("notify-keyspace-events", "Kl")  # list commands only
        await self._pubsub.psubscribe(self._pattern)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pubsub.punsubscribe(self._pattern)
        await self._pubsub.aclose()

    async def next_take(self, within: float) -> bool:
        """Wait for the next take; False when none came within `within` s."""
        deadline = asyncio.get_running_loop().time() + within
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                     timeout=left)
            if message and _text(message["data"]) in ("lpush", "rpush"):
                return True
        return False
