"""Event routes: filtered lists, one event with its detections, review and notes (nothing else)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiohttp import web

from hsid.analysis.assessment import RISK_LEVELS
from hsid.api.detections import (
    DETECTION,
    DETECTION_COLUMNS,
    PICTURE_WIDTH,
    evidence,
    jpeg_response,
)
from hsid.api.fields import INT32_MAX, Arr, Body, Bool, Int, Shape, Str, out
from hsid.api.queries import (
    TIME_RANGE,
    Listing,
    fetch_one,
    fetch_page,
    like_pattern,
    page_of,
    paged,
    update_one,
)
from hsid.api.routing import ApiRoutes, Audit, Call

EVENT_COLUMNS = (
    "id, batch_id, camera_id, started_at, ended_at, risk_score, risk_level, summary, "
    "reasoning, detection_ids, reviewed, notes, is_fast_path"
)
SELECT_EVENT = "SELECT " + EVENT_COLUMNS + " FROM events WHERE id = $1"
SELECT_EVENT_DETECTIONS = (
    "SELECT " + DETECTION_COLUMNS
    + " FROM detections WHERE id = any($1::integer[]) ORDER BY detected_at, id"
)
UPDATE_EVENT = "UPDATE events SET {sets} WHERE id = $1 RETURNING " + EVENT_COLUMNS
# A bulk review's note ($3) replaces each event's notes, as a PATCH does; none keeps them.
REVIEW_EVENTS = """
UPDATE events SET reviewed = $2, notes = coalesce($3::text, notes)
WHERE id = any($1::integer[]) RETURNING id
"""


def detection_ids(text: str | None) -> list[int] | None:
    """events.detection_ids (a JSON array in a text column) as ids; None if absent or not
    a list of ids, so one odd row cannot break a whole page."""
    try:
        ids = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(ids, list):
        return None
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)
            and 0 < i <= INT32_MAX]


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    event = dict(row)
    event["detection_ids"] = detection_ids(row["detection_ids"])
    return event


# Newest first; id breaks ties so that pages never overlap.
LIST_EVENTS = Listing(
    select="SELECT " + EVENT_COLUMNS + " FROM events {where} "
           "ORDER BY started_at DESC, id DESC LIMIT {limit} OFFSET {offset}",
    table="events",
    filters={
        "camera_id": "camera_id = {}",
        "risk_level": "risk_level = {}",
        "min_risk": "risk_score >= {}",
        "max_risk": "risk_score <= {}",
        "reviewed": "reviewed = {}",
        "is_fast_path": "is_fast_path = {}",
        "start": "started_at >= {}",
        "end": "started_at < {}",
        "q": r"summary ILIKE {} ESCAPE '\'",
    },
    row=event_json,
)

# Risk analysis is immutable (the reference): a body naming these is refused, not ignored.
IMMUTABLE = frozenset({
    "id", "batch_id", "camera_id", "started_at", "ended_at", "risk_score", "risk_level",
    "summary", "reasoning", "detection_ids", "is_fast_path",
})
EVENT_PATH = {"event_id": Int(minimum=1, description="event id")}
REVIEW_FIELDS = {
    "reviewed": Bool(),
    "notes": Str(nullable=True, max_length=10_000),
}
EVENT_PROPERTIES = {
    "id": out("integer"),
    "batch_id": out("string"),
    "camera_id": out("string"),
    "started_at": out("string", format="date-time"),
    "ended_at": out("string", nullable=True, format="date-time"),
    "risk_score": out("integer", nullable=True),
    "risk_level": out("string", nullable=True),
    "summary": out("string", nullable=True),
    "reasoning": out("string", nullable=True),
    "detection_ids": out("array", nullable=True, items={"type": "integer"}),
    "reviewed": out("boolean"),
    "notes": out("string", nullable=True),
    "is_fast_path": out("boolean"),
}
EVENT = Shape(EVENT_PROPERTIES)
EVENT_WITH_DETECTIONS = Shape({
    **EVENT_PROPERTIES, "detections": out("array", items=DETECTION.schema()),
})

api = ApiRoutes("events")


@api.get(
    "/api/events", "List events, newest first", response=page_of(EVENT),
    query=paged({
        "camera_id": Str(max_length=64),
        "risk_level": Str(enum=RISK_LEVELS),
        "min_risk": Int(minimum=0, maximum=100),
        "max_risk": Int(minimum=0, maximum=100),
        "reviewed": Bool(),
        "is_fast_path": Bool(),
        **TIME_RANGE,
        "q": Str(min_length=1, max_length=200, description="text in the summary"),
    }),
)
async def list_events(call: Call) -> dict:
    query = dict(call.query)
    if query["q"] is not None:
        query["q"] = like_pattern(query["q"])
    return await fetch_page(call.pool, LIST_EVENTS, query)


@api.get("/api/events/{event_id}", "Get an event with its detections",
         path_params=EVENT_PATH, response=EVENT_WITH_DETECTIONS)
async def get_event(call: Call) -> dict:
    event = event_json(await fetch_one(call.pool, SELECT_EVENT, call.path["event_id"],
                                       what="event"))
    rows = await call.pool.fetch(SELECT_EVENT_DETECTIONS, event["detection_ids"] or [])
    return {**event, "detections": [dict(row) for row in rows]}


@api.patch(
    "/api/events/{event_id}", "Mark an event reviewed or edit its notes (nothing else)",
    path_params=EVENT_PATH, body=Body(REVIEW_FIELDS, partial=True, immutable=IMMUTABLE),
    response=EVENT, audit=Audit("event_updated", "event", "event_id"),
)
async def update_event(call: Call) -> dict:
    if "reviewed" in call.body:
        call.audit(action="event_reviewed", reviewed=call.body["reviewed"])
    row = await update_one(call.pool, UPDATE_EVENT, call.body, call.path["event_id"],
                           what="event")
    return event_json(row)


@api.post(
    "/api/events/review", "Mark many events reviewed (or not) at once",
    body=Body({
        "ids": Arr(items=Int(minimum=1), min_items=1, max_items=1000, required=True),
        "reviewed": Bool(default=True),
        "notes": Str(max_length=10_000,
                     description="replaces the notes of every event named; absent: kept"),
    }),
    response=Shape({
        "updated": out("array", items={"type": "integer"}),
        "not_found": out("array", items={"type": "integer"}),
    }),
    audit=Audit("events_reviewed", "event"),
)
async def review_events(call: Call) -> dict:
    ids = sorted(set(call.body["ids"]))
    notes = call.body.get("notes")
    updated = sorted(r["id"] for r in await call.pool.fetch(
        REVIEW_EVENTS, ids, call.body["reviewed"], notes))
    missing = sorted(set(ids) - set(updated))
    call.audit(ids=ids, reviewed=call.body["reviewed"], not_found=missing)
    return {"updated": updated, "not_found": missing}


@api.get("/api/events/{event_id}/snapshot", "The event's most telling image, annotated",
         path_params=EVENT_PATH, media_types=("image/jpeg",), query={"width": PICTURE_WIDTH})
async def get_event_snapshot(call: Call) -> web.Response:
    """The image of the event's surest person (else its surest detection) with the boxes,
    class labels and confidences of that image's detections drawn, as JPEG."""
    picture = await evidence(call).event_picture(call.path["event_id"], call.query["width"])
    return jpeg_response(picture.jpeg)
