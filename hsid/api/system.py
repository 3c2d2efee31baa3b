"""System routes: health (cheap, always open), statistics, and the effective configuration."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import ConfigDict, Field

from hsid.analysis.calibration import calibration_report
from hsid.api.fields import Int, Shape, params
from hsid.api.queries import row_counts
from hsid.api.routing import ApiRoutes, Call, iso, json_response
from hsid.core.config import redacted
from hsid.core.health import health_report
from hsid.upkeep.status import queue_figures


class TableCounts(Shape):  # the tables counted, then unreviewed_events
    cameras: int
    events: int
    detections: int
    alerts: int
    alert_rules: int
    zones: int
    entities: int
    unreviewed_events: int


COUNTED_TABLES = tuple(TableCounts.model_fields)[:-1]
# Exact: what the dashboard's "to review" badge shows (idx_events_reviewed serves it).
COUNT_UNREVIEWED = "SELECT count(*) FROM events WHERE NOT reviewed"


class Stats(Shape):
    counts: TableCounts = Field(
        description="rows per table (past 10,000 rows, the planner's estimate)")
    queues: dict[str, int]
    dlq: dict[str, int]
    detector: Any = Field(description="execution provider and model, as the detector reports")
    info: dict[str, Any] = Field(description="everything the stages report to health")
    started_at: datetime
    uptime_seconds: int


class Health(Shape):
    model_config = ConfigDict(extra="allow")

    status: Literal["healthy", "unhealthy"]
    database: dict[str, Any]
    redis: dict[str, Any]
    stages: dict[str, Any]


class RiskCalibration(Shape):
    days: int
    thresholds: dict[str, int]
    cameras: list[dict[str, Any]] = Field(
        description="per camera and risk level: events, feedback (reviewed, alert "
                    "acknowledged or dismissed), dismissed, confirmed, dismissal_rate "
                    "(null without feedback)")
    suggestions: list[str]


CalibrationQuery = params(days=(Annotated[int, Int(1, 3650)], Field(30, description="the window")))


api = ApiRoutes("system")


@api.get("/api/system/health", "Health of the stores and stages (503 when unhealthy)",
         response=Health, responses={503: Health}, public=True)
async def get_health(call: Call) -> web.Response:
    runtime = call.runtime
    healthy, report = await health_report(runtime.health, runtime.pool, runtime.redis)
    return json_response(report, status=200 if healthy else 503)


@api.get("/api/system/stats", "Row counts, queue depths, dead letters, detector, uptime",
         response=Stats)
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
         response=dict[str, dict[str, Any]])
async def get_config(call: Call) -> dict:
    return redacted(call.runtime.config)


@api.get("/api/system/calibration", "How often people dismissed events, per camera and risk "
         "level, with suggested band or rule changes", response=RiskCalibration,
         query=CalibrationQuery)
async def get_risk_calibration(call: Call) -> dict:
    return await calibration_report(call.pool, call.runtime.config.analyzer, call.query["days"])
