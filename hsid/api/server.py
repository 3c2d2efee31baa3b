"""Builds the aiohttp application and serves it on the configured host and port."""

from __future__ import annotations

import ipaddress

import structlog
from aiohttp import web

from hsid.api import (
    alert_rules,
    alerts,
    audit,
    calibrations,
    cameras,
    detections,
    dlq,
    entities,
    events,
    logs,
    maintenance,
    openapi,
    page,
    prompts,
    scene_changes,
    system,
    websocket,
    zones,
)
from hsid.api.auth import API_KEYS, ApiKeys, auth_middleware
from hsid.api.keys import RUNTIME
from hsid.api.middleware import error_middleware, request_id_middleware
from hsid.api.routing import ROUTE_SPECS, register
from hsid.core.runtime import Runtime

log = structlog.get_logger(__name__)

RESOURCES = (
    system, cameras, zones, calibrations, events, detections, alert_rules, alerts, entities,
    scene_changes, prompts, logs, dlq, audit, maintenance, websocket, openapi, page,
)


def build_app(runtime: Runtime) -> web.Application:
    # Outermost first: the audit middleware sits outside the error mapping so it sees each
    # call's final status, and outside auth so refused keys are audited as failures.
    app = web.Application(
        middlewares=[request_id_middleware, audit.audit_middleware, error_middleware,
                     auth_middleware],
        client_max_size=runtime.config.api.max_body_bytes,
    )
    app[RUNTIME] = runtime
    app[API_KEYS] = ApiKeys(runtime.config.api)
    app[websocket.RELAYS] = websocket.relays(runtime)
    register(app, [route for module in RESOURCES for route in module.api.routes])
    app[openapi.OPENAPI_DOCUMENT] = openapi.document(app[ROUTE_SPECS].values())
    app.on_shutdown.append(websocket.close_relays)
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
