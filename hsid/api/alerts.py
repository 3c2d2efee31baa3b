"""Alert routes: filtered lists, one alert, and the user's acknowledge and dismiss."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

import asyncpg

from hsid.api.alert_rules import Severity
from hsid.api.fields import Field, Int, Shape, Uuid, columns, params
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.errors import Conflict, NotFound

Status = Literal["pending", "delivered", "acknowledged", "dismissed"]
STATUSES = get_args(Status)


class Alert(Shape):
    id: UUID
    event_id: int
    rule_id: UUID | None
    severity: Severity
    status: Status
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    channels: Any
    dedup_key: str
    metadata: Any


AlertPath = params(alert_id=(Uuid, Field(description="alert id")))
AlertQuery = params(Paged, status=(Status, None), severity=(Severity, None),
                           event_id=(Annotated[int, Int(ge=1)], None), rule_id=(Uuid, None))


ALERT_COLUMNS = columns(Alert)
SELECT_ALERT = "SELECT " + ALERT_COLUMNS + " FROM alerts WHERE id = $1"
# One statement decides and writes, so a concurrent change cannot slip in between: the
# row comes back only if its status allowed the move ($3), `found` tells 404 from 409.
TRANSITION_ALERT = """
WITH current AS (SELECT id, status FROM alerts WHERE id = $1 FOR UPDATE),
changed AS (
    UPDATE alerts SET status = $2, updated_at = now()
    FROM current WHERE alerts.id = current.id AND current.status = any($3::text[])
    RETURNING alerts.*
)
SELECT (SELECT status FROM current) AS found, changed.* FROM (SELECT 1) AS one
LEFT JOIN changed ON true
"""
LIST_ALERTS = Listing(
    select="SELECT " + ALERT_COLUMNS + " FROM alerts {where} "
           "ORDER BY created_at DESC, id LIMIT {limit} OFFSET {offset}",
    table="alerts",
    filters={
        "status": "status = {}",
        "severity": "severity = {}",
        "event_id": "event_id = {}",
        "rule_id": "rule_id = {}",
    },
)

# Repeating an action is harmless; only acknowledging a dismissed alert is a conflict.
ACKNOWLEDGE_FROM = ("pending", "delivered", "acknowledged")
DISMISS_FROM = STATUSES

api = ApiRoutes("alerts")


async def _transition(call: Call, status: str, allowed_from: tuple[str, ...]) -> dict:
    row = await call.pool.fetchrow(TRANSITION_ALERT, call.path["alert_id"], status,
                                   list(allowed_from))
    if row["found"] is None:
        raise NotFound("alert not found")
    if row["id"] is None:
        raise Conflict(f"an alert that is {row['found']} cannot become {status}")
    return {name: row[name] for name in Alert.model_fields}


@api.get("/api/alerts", "List alerts, newest first", response=Page[Alert], query=AlertQuery)
async def list_alerts(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_ALERTS, call.query)


@api.get("/api/alerts/{alert_id}", "Get an alert", path_params=AlertPath, response=Alert)
async def get_alert(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_ALERT, call.path["alert_id"], what="alert")


@api.post("/api/alerts/{alert_id}/acknowledge", "Acknowledge an alert",
          path_params=AlertPath, response=Alert,
          audit=Audit("alert_acknowledged", "alert", "alert_id"))
async def acknowledge_alert(call: Call) -> dict:
    return await _transition(call, "acknowledged", ACKNOWLEDGE_FROM)


@api.post("/api/alerts/{alert_id}/dismiss", "Dismiss an alert", path_params=AlertPath,
          response=Alert, audit=Audit("alert_dismissed", "alert", "alert_id"))
async def dismiss_alert(call: Call) -> dict:
    return await _transition(call, "dismissed", DISMISS_FROM)
