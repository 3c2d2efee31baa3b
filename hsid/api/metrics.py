"""Prometheus exposition: GET /metrics with every hsid metric, queue gauges fresh."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hsid.api.keys import RUNTIME
from hsid.core.metrics import REGISTRY
from hsid.upkeep.status import queue_figures

routes = web.RouteTableDef()


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    """The registry in the text format. Queue depths live in Redis, not in this process,
    so they are read at scrape time (skipped, keeping the last values, when Redis is not
    connected or slow)."""
    runtime = request.app[RUNTIME]
    await queue_figures(runtime.redis, runtime.keyspace)
    # The content type carries a version and charset, which `content_type=` refuses.
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
