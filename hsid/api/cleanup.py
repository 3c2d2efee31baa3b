"""Cleanup routes: preview (GET, dry run) and run (POST) the retention cleanup on demand."""

from __future__ import annotations

from aiohttp import web

from hsid.api.keys import RUNTIME
from hsid.api.middleware import BadParameter
from hsid.core.errors import Conflict
from hsid.core.locks import singleton_lock
from hsid.core.runtime import Runtime
from hsid.upkeep.cleanup import CLEANUP_DUTY, run_cleanup

routes = web.RouteTableDef()

FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _dry_run(request: web.Request, default: bool) -> bool:
    value = request.query.get("dry_run")
    if value is None:
        return default
    if value.lower() not in FLAG_VALUES:
        raise BadParameter(f"dry_run must be true or false, got {value!r}", field="dry_run")
    return FLAG_VALUES[value.lower()]


async def _cleanup(runtime: Runtime, dry_run: bool) -> web.Response:
    config = runtime.config
    stats = await run_cleanup(runtime.require_pool(), config.retention, config.paths, dry_run)
    return web.json_response(stats.to_dict())


@routes.get("/api/system/cleanup")
async def preview_cleanup(request: web.Request) -> web.Response:
    """What a cleanup would delete now (the reference's dry-run JSON). A GET never deletes,
    so dry_run=false is refused rather than silently ignored."""
    if not _dry_run(request, default=True):
        raise BadParameter("GET only previews a cleanup; POST runs one", field="dry_run")
    return await _cleanup(request.app[RUNTIME], dry_run=True)


@routes.post("/api/system/cleanup")
async def start_cleanup(request: web.Request) -> web.Response:
    """Run a cleanup now (dry_run=true previews instead), under the daily run's lock so
    that two cleanups never run at once; 409 while another one holds it."""
    runtime = request.app[RUNTIME]
    if _dry_run(request, default=False):
        return await _cleanup(runtime, dry_run=True)
    async with singleton_lock(runtime.require_redis(), runtime.keyspace, CLEANUP_DUTY) as held:
        if not held:
            raise Conflict("a cleanup is already running")
        return await _cleanup(runtime, dry_run=False)
