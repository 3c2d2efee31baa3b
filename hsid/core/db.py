"""PostgreSQL access: the asyncpg pool, schema.sql, and the connection retry loop."""

from __future__ import annotations

import json
from importlib import resources

import asyncpg
import structlog

from hsid.core.config import DatabaseConfig
from hsid.core.errors import Unavailable

log = structlog.get_logger(__name__)

# Any number works; it only has to be the same in every hsid process, so that two
# processes starting at once apply the schema one after the other.
SCHEMA_LOCK_ID = 0x68736964  # "hsid"


# The events `q=` search (summary ILIKE '%...%') as an index scan instead of reading every
# summary (scripts/bench_api.py, 100k events: p99 75.7 -> 25.4 ms). pg_trgm is a contrib
# extension, trusted since PostgreSQL 13; a server without contrib, or a role that may not
# create it, loses only the speed, so these run apart from schema.sql and may fail.
TEXT_SEARCH_INDEX = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS idx_events_summary_trgm ON events USING gin "
    "(summary gin_trgm_ops)",
)


def schema_sql() -> str:
    """The text of schema.sql, shipped inside the package (a link to the repository root's)."""
    return resources.files("hsid").joinpath("schema.sql").read_text(encoding="utf-8")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON and JSONB columns read and write Python objects, set once per connection.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(config: DatabaseConfig, dsn: str | None = None) -> asyncpg.Pool:
    """Open a pool once; raises Unavailable when the server cannot be reached."""
    try:
        return await asyncpg.create_pool(
            dsn or config.url,
            min_size=config.pool_min,
            max_size=config.pool_max,
            timeout=config.connect_timeout_seconds,
            init=_init_connection,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as err:
        raise Unavailable(f"database unreachable: {err}") from err


async def apply_schema(pool: asyncpg.Pool, sql: str | None = None) -> None:
    """Apply schema.sql in one transaction, then the optional text search index;
    idempotent, safe with several processes."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        await conn.execute(sql or schema_sql())
    log.info("schema_applied")
    if sql is None:
        await _add_text_search_index(pool)


async def _add_text_search_index(pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
            for statement in TEXT_SEARCH_INDEX:
                await conn.execute(statement)
    except asyncpg.PostgresError as err:
        log.info("text_search_index_unavailable", reason=str(err),
                 effect="q= searches read every event summary")

