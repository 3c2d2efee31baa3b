"""Dead-letter queue routes: counts, entries, requeue (one or all) and clear."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from hsid.api.fields import Absent, Body, Field, Int, Shape, params, shape
from hsid.api.queries import Page, Paged
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core import queues
from hsid.core.constants import QUEUE_NAMES
from hsid.core.errors import InvalidInput

QueuePath = params(
    queue=(Literal[QUEUE_NAMES], Field(description="queue whose dead letters to use")))
Counts = shape("DlqCounts", __doc__="entries per dead-letter queue",
               **dict.fromkeys(QUEUE_NAMES, int))


class DlqEntry(Shape):
    """the reference's DLQ item"""

    original_job: Any
    error: str
    attempt_count: int
    first_failed_at: str
    last_failed_at: str
    queue_name: str


class RequeueBody(Body):
    index: Annotated[int, Int(ge=0)] = Absent("position of the one entry to requeue")
    all: bool = Absent("requeue every entry (also what an empty body does)")


Requeued = shape("Requeued", requeued=int)
Cleared = shape("Cleared", cleared=int)


api = ApiRoutes("dead-letter queues")


@api.get("/api/dlq", "Entries in each dead-letter queue", response=Counts)
async def get_dlq_counts(call: Call) -> dict:
    return await queues.dlq_counts(call.redis, call.runtime.keyspace)


@api.get("/api/dlq/{queue}", "A dead-letter queue's entries, oldest failure first",
         path_params=QueuePath, query=Paged, response=Page[DlqEntry])
async def list_dlq(call: Call) -> dict:
    queue, limit, offset = call.path["queue"], call.query["limit"], call.query["offset"]
    keyspace = call.runtime.keyspace
    items = await queues.dlq_items(call.redis, keyspace, queue, offset, limit)
    total = (await queues.dlq_counts(call.redis, keyspace))[queue]
    return {"items": items, "count": total, "limit": limit, "offset": offset}


@api.post(
    "/api/dlq/{queue}/requeue", "Put dead letters back on their queue: one by index, or all",
    path_params=QueuePath,
    body=RequeueBody, response=Requeued,
    audit=Audit("dlq_requeued", "dlq", "queue"),
)
async def requeue_dlq(call: Call) -> dict:
    index, everything = call.body.get("index"), call.body.get("all")
    if index is not None and everything:
        raise InvalidInput("give index or all, not both", field="all")
    if index is None and everything is False:
        raise InvalidInput("all: false needs an index", field="index")
    requeued = await queues.dlq_requeue(call.redis, call.runtime.keyspace, call.path["queue"],
                                        index)
    call.audit(index=index, requeued=requeued)
    return {"requeued": requeued}


@api.delete("/api/dlq/{queue}", "Delete every entry of a dead-letter queue",
            path_params=QueuePath, response=Cleared,
            audit=Audit("dlq_cleared", "dlq", "queue"))
async def clear_dlq(call: Call) -> dict:
    cleared = await queues.dlq_clear(call.redis, call.runtime.keyspace, call.path["queue"])
    call.audit(cleared=cleared)
    return {"cleared": cleared}
