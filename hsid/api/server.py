"""Builds the aiohttp application and serves it on the configured host and port."""

from __future__ import annotations

import ipaddress

import structlog
from aiohttp import web

from hsid.api import system
from hsid.api.keys import RUNTIME
from hsid.api.middleware import error_middleware, request_id_middleware
from hsid.runtime import Runtime

log = structlog.get_logger(__name__)


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware],
        client_max_size=runtime.config.api.max_body_bytes,
    )
    app[RUNTIME] = runtime
    app.add_routes(system.routes)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_api(runtime: Runtime) -> web.AppRunner:
    """Start listening; the caller cleans up the returned runner."""
    api = runtime.config.api
    if not is_loopback(api.host) and not api.api_key_enabled:
        log.warning(
            "api_exposed_without_keys",
            host=api.host,
            risk="anyone who can reach this address can read events and change settings; "
            "set API_KEY_ENABLED=true and API_KEYS",
        )
    runner = web.AppRunner(build_app(runtime), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, api.host, api.port)
    await site.start()
    log.info("api_listening", host=api.host, port=api.port)
    return runner
