"""Routes whose handlers live in other packages (retention cleanup, Prometheus metrics),
declared here so that auth, audit and the OpenAPI document cover them too."""

from __future__ import annotations

from hsid.api import cleanup as cleanup_http
from hsid.api import metrics as metrics_http
from hsid.api.fields import Bool, Shape, out
from hsid.api.routing import ApiRoutes, Audit, plain

DRY_RUN = {"dry_run": Bool(description="only count what would be deleted")}
CLEANUP = Shape({
    **{name: out("integer") for name in (
        "events_deleted", "detections_deleted", "gpu_stats_deleted", "logs_deleted",
        "thumbnails_deleted", "images_deleted", "space_reclaimed", "retention_days")},
    "dry_run": out("boolean"),
    "timestamp": out("string", format="date-time"),
}, description="the reference's cleanup statistics")

api = ApiRoutes("maintenance")

api.get("/api/system/cleanup", "Preview the retention cleanup (a dry run)", query=DRY_RUN,
        response=CLEANUP)(plain(cleanup_http.preview_cleanup))
api.post("/api/system/cleanup", "Run the retention cleanup now", query=DRY_RUN,
         response=CLEANUP, audit=Audit("cleanup_run", "system"))(
    plain(cleanup_http.start_cleanup))
api.get("/metrics", "Prometheus metrics (text exposition format)",
        media_types=("text/plain",))(plain(metrics_http.get_metrics))
