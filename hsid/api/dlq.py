"""Dead-letter queue routes: counts, entries, requeue (one or all) and clear."""

from __future__ import annotations

from hsid.api.fields import Body, Bool, Int, Shape, Str, out
from hsid.api.queries import page_of, paged
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core import queues
from hsid.core.constants import QUEUE_NAMES
from hsid.core.errors import InvalidInput

QUEUE_PATH = {"queue": Str(enum=QUEUE_NAMES, description="queue whose dead letters to use")}
COUNTS = Shape({name: out("integer") for name in QUEUE_NAMES},
               description="entries per dead-letter queue")
ENTRY = Shape({
    "original_job": out(None),
    "error": out("string"),
    "attempt_count": out("integer"),
    "first_failed_at": out("string"),
    "last_failed_at": out("string"),
    "queue_name": out("string"),
}, description="the reference's DLQ item")

api = ApiRoutes("dead-letter queues")


@api.get("/api/dlq", "Entries in each dead-letter queue", response=COUNTS)
async def get_dlq_counts(call: Call) -> dict:
    return await queues.dlq_counts(call.redis, call.runtime.keyspace)


@api.get("/api/dlq/{queue}", "A dead-letter queue's entries, oldest failure first",
         path_params=QUEUE_PATH, query=paged({}), response=page_of(ENTRY))
async def list_dlq(call: Call) -> dict:
    queue, limit, offset = call.path["queue"], call.query["limit"], call.query["offset"]
    keyspace = call.runtime.keyspace
    items = await queues.dlq_items(call.redis, keyspace, queue, offset, limit)
    total = (await queues.dlq_counts(call.redis, keyspace))[queue]
    return {"items": items, "count": total, "limit": limit, "offset": offset}


@api.post(
    "/api/dlq/{queue}/requeue", "Put dead letters back on their queue: one by index, or all",
    path_params=QUEUE_PATH,
    body=Body({
        "index": Int(minimum=0, description="position of the one entry to requeue"),
        "all": Bool(description="requeue every entry (also what an empty body does)"),
    }),
    response=Shape({"requeued": out("integer")}),
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
            path_params=QUEUE_PATH, response=Shape({"cleared": out("integer")}),
            audit=Audit("dlq_cleared", "dlq", "queue"))
async def clear_dlq(call: Call) -> dict:
    cleared = await queues.dlq_clear(call.redis, call.runtime.keyspace, call.path["queue"])
    call.audit(cleared=cleared)
    return {"cleared": cleared}
