"""Event routes: filtered lists, one event with its detections, review and notes (nothing else)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web

from hsid.analysis.assessment import RISK_LEVELS
from hsid.api.detections import (
    DETECTION_COLUMNS,
    WIDTH,
    Detection,
    PictureWidth,
    evidence,
    jpeg_response,
)
from hsid.api.fields import (
    INT32_MAX,
    Absent,
    Arr,
    Body,
    Field,
    Int,
    Patch,
    Shape,
    Text,
    columns,
    params,
    shape,
)
from hsid.api.queries import (
    Listing,
    Page,
    TimeRange,
    fetch_one,
    fetch_page,
    like_pattern,
    update_one,
)
from hsid.api.routing import ApiRoutes, Audit, Call


class Event(Shape):
    id: int
    batch_id: str
    camera_id: str
    started_at: datetime
    ended_at: datetime | None
    risk_score: int | None
    risk_level: str | None
    summary: str | None
    reasoning: str | None
    detection_ids: list[int] | None
    reviewed: bool
    notes: str | None
    is_fast_path: bool


class EventWithDetections(Event):
    detections: list[Detection]


class EventReview(Patch):
    reviewed: bool = Absent()
    notes: Annotated[str, Text(10_000)] | None = None
    # Risk analysis is immutable (the reference): a body naming these is refused, not ignored.
    immutable = frozenset(Event.model_fields) - {"reviewed", "notes"}


EventPath = params(event_id=(Annotated[int, Int(ge=1)], Field(description="event id")))
EventQuery = params(
    TimeRange, camera_id=(Annotated[str, Text(64)], None), risk_level=(Literal[RISK_LEVELS], None),
    min_risk=(Annotated[int, Int(0, 100)], None), max_risk=(Annotated[int, Int(0, 100)], None),
    reviewed=(bool, None), is_fast_path=(bool, None),
    q=(Annotated[str, Text(200, min_length=1)], Field(None, description="text in the summary")))

SnapshotQuery = params(width=(PictureWidth, WIDTH))


class ReviewBody(Body):
    ids: Annotated[list[Annotated[int, Int(ge=1)]], Arr(1, 1000)]
    reviewed: bool = True
    notes: Annotated[str, Text(10_000)] = Absent(
        "replaces the notes of every event named; absent: kept")


Reviewed = shape("Reviewed", updated=list[int], not_found=list[int])


EVENT_COLUMNS = columns(Event)
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

api = ApiRoutes("events")


@api.get("/api/events", "List events, newest first", response=Page[Event], query=EventQuery)
async def list_events(call: Call) -> dict:
    query = dict(call.query)
    if query["q"] is not None:
        query["q"] = like_pattern(query["q"])
    return await fetch_page(call.pool, LIST_EVENTS, query)


@api.get("/api/events/{event_id}", "Get an event with its detections",
         path_params=EventPath, response=EventWithDetections)
async def get_event(call: Call) -> dict:
    event = event_json(await fetch_one(call.pool, SELECT_EVENT, call.path["event_id"],
                                       what="event"))
    rows = await call.pool.fetch(SELECT_EVENT_DETECTIONS, event["detection_ids"] or [])
    return {**event, "detections": [dict(row) for row in rows]}


@api.patch(
    "/api/events/{event_id}", "Mark an event reviewed or edit its notes (nothing else)",
    path_params=EventPath, body=EventReview, response=Event,
    audit=Audit("event_updated", "event", "event_id"),
)
async def update_event(call: Call) -> dict:
    if "reviewed" in call.body:
        call.audit(action="event_reviewed", reviewed=call.body["reviewed"])
    row = await update_one(call.pool, UPDATE_EVENT, call.body, call.path["event_id"],
                           what="event")
    return event_json(row)


@api.post(
    "/api/events/review", "Mark many events reviewed (or not) at once",
    body=ReviewBody, response=Reviewed,
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
         path_params=EventPath, media_types=("image/jpeg",), query=SnapshotQuery)
async def get_event_snapshot(call: Call) -> web.Response:
    """The image of the event's surest person (else its surest detection) with the boxes,
    class labels and confidences of that image's detections drawn, as JPEG."""
    picture = await evidence(call).event_picture(call.path["event_id"], call.query["width"])
    return jpeg_response(picture.jpeg)
