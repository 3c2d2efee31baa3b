"""Routes whose handlers live in other packages (retention cleanup, Prometheus metrics),
declared here so that auth, audit and the OpenAPI document cover them too."""

from __future__ import annotations

from datetime import datetime

from hsid.api import cleanup as cleanup_http
from hsid.api import metrics as metrics_http
from hsid.api.fields import Field, Shape, params
from hsid.api.routing import ApiRoutes, Audit, plain

DryRun = params(dry_run=(bool, Field(None, description="only count what would be deleted")))


class Cleanup(Shape):
    """the reference's cleanup statistics"""

    events_deleted: int
    detections_deleted: int
    gpu_stats_deleted: int
    logs_deleted: int
    thumbnails_deleted: int
    images_deleted: int
    space_reclaimed: int
    retention_days: int
    dry_run: bool
    timestamp: datetime


api = ApiRoutes("maintenance")

api.get("/api/system/cleanup", "Preview the retention cleanup (a dry run)", query=DryRun,
        response=Cleanup)(plain(cleanup_http.preview_cleanup))
api.post("/api/system/cleanup", "Run the retention cleanup now", query=DryRun,
         response=Cleanup, audit=Audit("cleanup_run", "system"))(
    plain(cleanup_http.start_cleanup))
api.get("/metrics", "Prometheus metrics (text exposition format)",
        media_types=("text/plain",))(plain(metrics_http.get_metrics))
