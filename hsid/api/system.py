"""System routes: health (cheap, always open)."""

from __future__ import annotations

from aiohttp import web

from hsid.api.keys import RUNTIME
from hsid.services.health import health_report

routes = web.RouteTableDef()


@routes.get("/api/system/health")
async def get_health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    healthy, report = await health_report(runtime.health, runtime.pool, runtime.redis)
    return web.json_response(report, status=200 if healthy else 503)
