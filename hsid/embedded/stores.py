"""Which stores run embedded: starting them for `hsid run`, and their addresses and modes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import structlog

from hsid.core.config import Config
from hsid.core.errors import Unavailable
from hsid.embedded.postgres import EmbeddedPostgres, cluster_major
from hsid.embedded.processes import INSTALL_HINT, find_postgres_bin, find_redis_server, server_user
from hsid.embedded.redis_server import EmbeddedRedis
from hsid.embedded.server import EmbeddedServer

log = structlog.get_logger(__name__)

EMBEDDED_DIR = "embedded"


def embedded_root(config: Config) -> Path:
    return config.paths.state_dir / EMBEDDED_DIR


async def start_embedded_stores(config: Config, stack: AsyncExitStack) -> Config:
    """Start an embedded server for each store without a URL; the config with URLs filled in.

    Each server's stop goes on `stack`, so it ends after everything that uses it. Logs one
    line per store saying which mode is in use. Raises Unavailable.
    """
    root = embedded_root(config)
    servers: dict[str, tuple[str, Callable[[], EmbeddedServer]]] = {
        "database": (config.database.url, lambda: EmbeddedPostgres(root / "pg")),
        "redis": (config.redis.url, lambda: EmbeddedRedis(root / "redis")),
    }
    overrides: dict[str, dict[str, str]] = {}
    for store, (url, make) in servers.items():
        if url:
            log.info("store_mode", store=store, mode="configured URL")
            continue
        server = make()
        overrides[store] = {"url": await server.start()}
        stack.push_async_callback(server.stop)
        log.info("embedded_store_started", store=store, mode="embedded", path=str(server.root),
                 binary=server.binary, user=server.user.name if server.user else None)
    return config.with_overrides(overrides) if overrides else config


def store_modes(config: Config) -> dict[str, str]:
    """How each store is reached, one line each, for `hsid check`; starts nothing.

    Values start with "configured URL", "embedded" or, when an embedded store could not
    start (no binaries, no account to run it as), "unavailable:" and the fix.
    """
    root = embedded_root(config)
    try:
        user = server_user()
    except Unavailable as err:
        user, problem = None, f"unavailable: {err}"
    else:
        problem = ""
    as_user = f", runs as user {user.name}" if user else ""
    modes: dict[str, str] = {}
    if config.database.url:
        modes["database"] = "configured URL"
    else:
        bin_dir = find_postgres_bin(cluster_major(root / "pg" / "data"))
        modes["database"] = problem or (
            f"embedded PostgreSQL ({bin_dir}{as_user}) in {root / 'pg'}" if bin_dir
            else f"unavailable: no PostgreSQL server binaries found; {INSTALL_HINT}")
    if config.redis.url:
        modes["redis"] = "configured URL"
    else:
        server = find_redis_server()
        modes["redis"] = problem or (
            f"embedded redis-server ({server}{as_user}) in {root / 'redis'}" if server
            else f"unavailable: no redis-server binary found; {INSTALL_HINT}")
    return modes


def with_embedded_addresses(config: Config) -> Config:
    """The config with empty URLs pointing at the embedded servers' sockets, starting nothing:
    operator commands (`hsid dlq`, `hsid cleanup`, `hsid init-db`) reach the stores of a
    running `hsid run` this way, without a second process owning them."""
    root = embedded_root(config)
    overrides: dict[str, dict[str, str]] = {}
    if not config.database.url:
        overrides["database"] = {"url": EmbeddedPostgres(root / "pg").dsn}
    if not config.redis.url:
        overrides["redis"] = {"url": EmbeddedRedis(root / "redis").url}
    return config.with_overrides(overrides) if overrides else config
