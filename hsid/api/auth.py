"""API keys: the configured keys hashed into api_keys, and the check every request passes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import asyncpg
import structlog
from aiohttp import web

from hsid.api.keys import ACTOR_KEY, RUNTIME
from hsid.api.middleware import Handler, Unauthorized
from hsid.api.routing import route_spec
from hsid.core.config import ApiConfig

log = structlog.get_logger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"  # WebSocket clients in browsers cannot set headers
NAME_MAX_LENGTH = 100  # api_keys.name is varchar(100)

# A key stays revoked across restarts: the upsert renames, it never reactivates.
UPSERT_KEY = """
INSERT INTO api_keys (key_hash, name) VALUES ($1, $2)
ON CONFLICT (key_hash) DO UPDATE SET name = EXCLUDED.name
"""
# Removing a key from API_KEYS revokes it; nothing else creates keys.
REVOKE_UNLISTED = """
UPDATE api_keys SET is_active = false WHERE is_active AND NOT (key_hash = any($1::text[]))
"""
SELECT_ACTIVE_KEYS = "SELECT key_hash, name FROM api_keys WHERE is_active"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def configured_keys(entries: tuple[str, ...]) -> dict[str, str]:
    """hash -> name for API_KEYS entries: "name:key", or a bare key named key-<position>."""
    keys: dict[str, str] = {}
    for position, entry in enumerate(entries, start=1):
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = f"key-{position}", entry
        if key:
            keys[hash_key(key)] = name[:NAME_MAX_LENGTH] or f"key-{position}"
    return keys


class ApiKeys:
    """Syncs the configured keys into the database once (on the first request that needs
    them: the API starts before the database is connected), then checks presented keys."""

    def __init__(self, config: ApiConfig) -> None:
        self._keys = configured_keys(config.api_keys)
        self._synced = False
        self._lock = asyncio.Lock()

    async def _sync(self, pool: asyncpg.Pool) -> None:
        async with self._lock:
            if self._synced:
                return
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(UPSERT_KEY, list(self._keys.items()))
                revoked = await conn.execute(REVOKE_UNLISTED, list(self._keys))
            self._synced = True
            if not self._keys:
                log.warning("api_keys_none_configured",
                            hint="API keys are required but API_KEYS is empty: every request "
                                 "except /api/system/health is refused")
            log.info("api_keys_synced", configured=len(self._keys), revoked=revoked)

    async def authenticate(self, pool: asyncpg.Pool, presented: str | None) -> str:
        """The key's name, or Unauthorized. Compared by hash in constant time against every
        active key, so neither a timing nor a lookup reveals how close a guess was."""
        if not presented:
            raise Unauthorized(f"an API key is required ({API_KEY_HEADER} header)")
        await self._sync(pool)
        digest = hash_key(presented).encode()
        name = None
        for row in await pool.fetch(SELECT_ACTIVE_KEYS):
            if hmac.compare_digest(row["key_hash"].encode(), digest):
                name = row["name"]
        if name is None:
            raise Unauthorized("the API key is not valid or has been revoked")
        return name


API_KEYS = web.AppKey("api_keys", ApiKeys)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route needs a key when keys are enabled, except public ones (health); unknown
    paths too, so that a caller without a key learns nothing about which routes exist."""
    runtime = request.app[RUNTIME]
    spec = route_spec(request)
    if not runtime.config.api.api_key_enabled or (spec is not None and spec.public):
        return await handler(request)
    presented = request.headers.get(API_KEY_HEADER)
    if presented is None and spec is not None and spec.websocket:
        presented = request.query.get(API_KEY_QUERY)
    request[ACTOR_KEY] = await request.app[API_KEYS].authenticate(
        runtime.require_pool(), presented)
    return await handler(request)
