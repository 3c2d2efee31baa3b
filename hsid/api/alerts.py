"""Alert routes: filtered lists, one alert, and the user's acknowledge and dismiss."""

from __future__ import annotations

import asyncpg

from hsid.api.alert_rules import SEVERITIES
from hsid.api.fields import Int, Shape, Str, Uuid, out
from hsid.api.queries import Listing, fetch_one, fetch_page, page_of, paged
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.errors import Conflict, NotFound

ALERT_COLUMNS = (
    "id, event_id, rule_id, severity, status, created_at, updated_at, delivered_at, channels, "
    "dedup_key, metadata"
)
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

STATUSES = ("pending", "delivered", "acknowledged", "dismissed")
# Repeating an action is harmless; only acknowledging a dismissed alert is a conflict.
ACKNOWLEDGE_FROM = ("pending", "delivered", "acknowledged")
DISMISS_FROM = STATUSES
ALERT_PATH = {"alert_id": Uuid(description="alert id")}
ALERT = Shape({
    "id": out("string", format="uuid"),
    "event_id": out("integer"),
    "rule_id": out("string", nullable=True, format="uuid"),
    "severity": out("string", enum=list(SEVERITIES)),
    "status": out("string", enum=list(STATUSES)),
    "created_at": out("string", format="date-time"),
    "updated_at": out("string", format="date-time"),
    "delivered_at": out("string", nullable=True, format="date-time"),
    "channels": out(None),
    "dedup_key": out("string"),
    "metadata": out(None),
})

api = ApiRoutes("alerts")


async def _transition(call: Call, status: str, allowed_from: tuple[str, ...]) -> dict:
    row = await call.pool.fetchrow(TRANSITION_ALERT, call.path["alert_id"], status,
                                   list(allowed_from))
    if row["found"] is None:
        raise NotFound("alert not found")
    if row["id"] is None:
        raise Conflict(f"an alert that is {row['found']} cannot become {status}")
    return {name: row[name] for name in ALERT.properties}


@api.get(
    "/api/alerts", "List alerts, newest first", response=page_of(ALERT),
    query=paged({
        "status": Str(enum=STATUSES), "severity": Str(enum=SEVERITIES),
        "event_id": Int(minimum=1), "rule_id": Uuid(),
    }),
)
async def list_alerts(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_ALERTS, call.query)


@api.get("/api/alerts/{alert_id}", "Get an alert", path_params=ALERT_PATH, response=ALERT)
async def get_alert(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_ALERT, call.path["alert_id"], what="alert")


@api.post("/api/alerts/{alert_id}/acknowledge", "Acknowledge an alert",
          path_params=ALERT_PATH, response=ALERT,
          audit=Audit("alert_acknowledged", "alert", "alert_id"))
async def acknowledge_alert(call: Call) -> dict:
    return await _transition(call, "acknowledged", ACKNOWLEDGE_FROM)


@api.post("/api/alerts/{alert_id}/dismiss", "Dismiss an alert", path_params=ALERT_PATH,
          response=ALERT, audit=Audit("alert_dismissed", "alert", "alert_id"))
async def dismiss_alert(call: Call) -> dict:
    return await _transition(call, "dismissed", DISMISS_FROM)
