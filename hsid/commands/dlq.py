"""`hsid dlq list|requeue|clear`: the operator's view of and hand on the dead-letter queues."""

from __future__ import annotations

import json
from typing import TextIO

from redis.asyncio import Redis

from hsid.core.broker import connect_redis
from hsid.core.config import Config
from hsid.core.constants import QUEUE_NAMES
from hsid.core.errors import InvalidInput
from hsid.core.keyspace import Keyspace
from hsid.core.queues import dlq_clear, dlq_counts, dlq_items, dlq_requeue

DLQ_ACTIONS = ("list", "requeue", "clear")
LIST_PAGE_SIZE = 100


async def dlq_command(
    config: Config, action: str, queue: str | None, index: int | None, out: TextIO
) -> int:
    """Run one DLQ action against the configured Redis, writing the result to `out`.

    list: one `<queue> <count>` line per queue, then with a queue its entries as JSON lines.
    requeue: entry `index` of `queue`, or all entries of `queue` (of every queue without one).
    clear: every entry of `queue` (required: clearing destroys the record of the failures).
    Returns 0. Raises InvalidInput for a bad action, queue or combination, NotFound for a bad
    index, Unavailable when Redis cannot be reached.
    """
    if action not in DLQ_ACTIONS:
        raise InvalidInput(f"unknown dlq action {action!r}; choose from {', '.join(DLQ_ACTIONS)}")
    if queue is not None and queue not in QUEUE_NAMES:
        raise InvalidInput(f"unknown queue {queue!r}; choose from {', '.join(QUEUE_NAMES)}",
                           field="queue")
    if index is not None and (action != "requeue" or queue is None):
        raise InvalidInput("an index needs `requeue` and a queue", field="index")
    if action == "clear" and queue is None:
        raise InvalidInput("clear needs a queue name", field="queue")
    keyspace = Keyspace.from_config(config.redis)
    redis = await connect_redis(config.redis)
    try:
        if action == "list":
            await _list(redis, keyspace, queue, out)
        elif action == "requeue":
            for name in (queue,) if queue is not None else QUEUE_NAMES:
                count = await dlq_requeue(redis, keyspace, name, index)
                print(f"requeued {count} item(s) from dlq:{name} to {name}", file=out)
        else:
            assert queue is not None  # clear needs one: checked above
            cleared = await dlq_clear(redis, keyspace, queue)
            print(f"cleared {cleared} item(s) from dlq:{queue}", file=out)
    finally:
        await redis.aclose()
    return 0


async def _list(redis: Redis, keyspace: Keyspace, queue: str | None, out: TextIO) -> None:
    for name, count in (await dlq_counts(redis, keyspace)).items():
        print(f"{name} {count}", file=out)
    if queue is None:
        return
    start = 0
    while page := await dlq_items(redis, keyspace, queue, start, LIST_PAGE_SIZE):
        for entry in page:
            print(json.dumps(entry, ensure_ascii=False), file=out)
        start += len(page)
