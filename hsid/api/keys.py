"""Typed application and request keys shared by the API modules."""

from __future__ import annotations

from aiohttp import web

from hsid.core.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)

# Who made the request: the API key's name, set by the auth middleware when keys are on.
ACTOR_KEY = web.RequestKey("actor", str)
ANONYMOUS = "anonymous"
