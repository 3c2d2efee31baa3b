"""Typed application keys shared by the API modules."""

from __future__ import annotations

from aiohttp import web

from hsid.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
