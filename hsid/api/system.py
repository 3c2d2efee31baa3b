"""System routes: health (cheap, always open), statistics, and the effective configuration."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from hsid.analysis.calibration import calibration_report
from hsid.api.fields import Int, Shape, out
from hsid.api.queries import row_counts
from hsid.api.routing import ApiRoutes, Call, iso, json_response
from hsid.core.config import redacted
from hsid.core.health import health_report
from hsid.upkeep.status import queue_figures

COUNTED_TABLES = ("cameras", "events", "detections", "alerts", "alert_rules", "zones",
                  "entities")
# Exact: what the dashboard's "to review" badge shows (idx_events_reviewed serves it).
COUNT_UNREVIEWED = "SELECT count(*) FROM events WHERE NOT reviewed"
COUNTED = (*COUNTED_TABLES, "unreviewed_events")

OBJECT = out("object", additionalProperties={"type": "integer"})
STATS = Shape({
    "counts": out("object", properties={name: {"type": "integer"} for name in COUNTED},
                  description="rows per table (past 10,000 rows, the planner's estimate)"),
    "queues": OBJECT,
    "dlq": OBJECT,
    "detector": out(None, description="execution provider and model, as the detector reports"),
    "info": out("object", description="everything the stages report to health"),
    "started_at": out("string", format="date-time"),
    "uptime_seconds": out("integer"),
})
HEALTH = Shape({
    "status": out("string", enum=["healthy", "unhealthy"]),
    "database": out("object"),
    "redis": out("object"),
    "stages": out("object"),
}, extra={"additionalProperties": True})

CALIBRATION = Shape({
    "days": out("integer"),
    "thresholds": OBJECT,
    "cameras": out("array", items={"type": "object"},
                   description="per camera and risk level: events, feedback (reviewed, alert "
                               "acknowledged or dismissed), dismissed, confirmed, "
                               "dismissal_rate (null without feedback)"),
    "suggestions": out("array", items={"type": "string"}),
})

api = ApiRoutes("system")


@api.get("/api/system/health", "Health of the stores and stages (503 when unhealthy)",
         response=HEALTH, responses={503: HEALTH}, public=True)
async def get_health(call: Call) -> web.Response:
    runtime = call.runtime
    healthy, report = await health_report(runtime.health, runtime.pool, runtime.redis)
    return json_response(report, status=200 if healthy else 503)


@api.get("/api/system/stats", "Row counts, queue depths, dead letters, detector, uptime",
         response=STATS)
async def get_stats(call: Call) -> dict:
    runtime = call.runtime
    counts = await row_counts(call.pool, COUNTED_TABLES)
    counts["unreviewed_events"] = await call.pool.fetchval(COUNT_UNREVIEWED)
    depths, dead = await queue_figures(runtime.redis, runtime.keyspace)
    return {
        "counts": counts,
        "queues": depths,
        "dlq": dead,
        "detector": runtime.health.info.get("detector"),
        "info": runtime.health.info,
        "started_at": iso(datetime.fromtimestamp(runtime.started_at, UTC)),
        "uptime_seconds": round(time.time() - runtime.started_at),
    }


@api.get("/api/system/config", "The effective configuration, secrets redacted",
         response=Shape({}, extra={"additionalProperties": {"type": "object"}}))
async def get_config(call: Call) -> dict:
    return redacted(call.runtime.config)


@api.get("/api/system/calibration", "How often people dismissed events, per camera and risk "
         "level, with suggested band or rule changes", response=CALIBRATION,
         query={"days": Int(minimum=1, maximum=3650, default=30, description="the window")})
async def get_risk_calibration(call: Call) -> dict:
    return await calibration_report(call.pool, call.runtime.config.analyzer, call.query["days"])
