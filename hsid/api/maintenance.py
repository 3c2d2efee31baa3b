"""Maintenance routes: the retention cleanup on demand, and Prometheus metrics."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hsid.api.fields import Field, Shape, params
from hsid.api.middleware import BadParameter
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.errors import Conflict
from hsid.core.locks import singleton_lock
from hsid.core.metrics import REGISTRY
from hsid.core.runtime import Runtime
from hsid.upkeep.cleanup import CLEANUP_DUTY, run_cleanup
from hsid.upkeep.status import queue_figures

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


@api.get("/api/system/cleanup", "Preview the retention cleanup (a dry run)", query=DryRun,
         response=Cleanup)
async def preview_cleanup(call: Call) -> dict:
    """What a cleanup would delete now (the reference's dry-run JSON). A GET never deletes,
    so dry_run=false is refused rather than silently ignored."""
    if call.query.get("dry_run") is False:
        raise BadParameter("GET only previews a cleanup; POST runs one", field="dry_run")
    return await _cleanup(call.runtime, dry_run=True)


@api.post("/api/system/cleanup", "Run the retention cleanup now", query=DryRun,
          response=Cleanup, audit=Audit("cleanup_run", "system"))
async def start_cleanup(call: Call) -> dict:
    """Run a cleanup now (dry_run=true previews instead), under the daily run's lock so
    that two cleanups never run at once; 409 while another one holds it."""
    if call.query.get("dry_run"):
        return await _cleanup(call.runtime, dry_run=True)
    async with singleton_lock(call.redis, call.runtime.keyspace, CLEANUP_DUTY) as held:
        if not held:
            raise Conflict("a cleanup is already running")
        return await _cleanup(call.runtime, dry_run=False)


async def _cleanup(runtime: Runtime, dry_run: bool) -> dict:
    config = runtime.config
    stats = await run_cleanup(runtime.require_pool(), config.retention, config.paths, dry_run)
    return stats.to_dict()


@api.get("/metrics", "Prometheus metrics (text exposition format)",
         media_types=("text/plain",))
async def get_metrics(call: Call) -> web.Response:
    """The registry in the text format. Queue depths live in Redis, not in this process,
    so they are read at scrape time (skipped, keeping the last values, when Redis is not
    connected or slow)."""
    runtime = call.runtime
    await queue_figures(runtime.redis, runtime.keyspace)
    # The content type carries a version and charset, which `content_type=` refuses.
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
