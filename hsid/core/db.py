"""PostgreSQL access: the asyncpg pool, schema.sql and its migrations, and the connection
retry loop."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
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


# Which numbered migrations (hsid/core/migrations/NNNN_name.sql) a database has had. Kept
# here rather than in schema.sql: it must exist before any migration runs, also in a
# database older than it.
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer         NOT NULL,
    name        varchar         NOT NULL,
    applied_at  timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
)"""

MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    """One upgrade step: hsid/core/migrations/<version:04d>_<name>.sql."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class SchemaResult:
    """What apply_schema did: `created` a fresh database from schema.sql (every known
    migration recorded as applied, its result being in schema.sql already), or ran the
    migrations in `applied` (labels, in order) on an existing one; neither: it was current."""

    created: bool
    applied: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.created:
            return "schema created"
        if self.applied:
            return "migrations applied: " + ", ".join(self.applied)
        return "schema current"


def migrations() -> list[Migration]:
    """The migrations shipped with this release, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("hsid.core").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise ValueError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise ValueError(f"two migrations numbered {version:04d}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


async def apply_schema(pool: asyncpg.Pool) -> SchemaResult:
    """Bring the database to this release's schema, then add the optional text search index.

    A fresh database gets schema.sql, with every migration recorded as applied. An existing
    one gets each migration it has not had, in order, each in its own transaction with its
    record, then schema.sql (idempotent) for anything added without a migration (an index).
    All of it under one advisory lock, so processes starting together apply it once.
    """
    known = migrations()
    sql = schema_sql()
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK_ID)
        try:
            result = await _bring_up_to_date(conn, sql, known)
        finally:
            # Also released when the connection closes, and by the pool's reset on release.
            if not conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_ID)
    log.info("schema_applied", result=result.describe(), migrations=list(result.applied))
    await _add_text_search_index(pool)
    return result


async def _bring_up_to_date(
    conn: asyncpg.Connection, sql: str, known: list[Migration]
) -> SchemaResult:
    async with conn.transaction():
        fresh = await conn.fetchval(
            "SELECT to_regclass('schema_migrations') IS NULL AND to_regclass('cameras') IS NULL")
        await conn.execute(MIGRATIONS_TABLE)
        if fresh:
            await conn.execute(sql)
            await conn.executemany(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                [(m.version, m.name) for m in known])
            return SchemaResult(created=True)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    newer = sorted(done - {m.version for m in known})
    if newer:
        log.warning("schema_newer_than_release", unknown_migrations=newer,
                    effect="this older hsid runs on a schema it does not know")
    applied: list[str] = []
    for migration in (m for m in known if m.version not in done):
        log.info("migration_applying", migration=migration.label)
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                               migration.version, migration.name)
        applied.append(migration.label)
    async with conn.transaction():
        await conn.execute(sql)
    return SchemaResult(created=False, applied=tuple(applied))


async def _add_text_search_index(pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
            for statement in TEXT_SEARCH_INDEX:
                await conn.execute(statement)
    except asyncpg.PostgresError as err:
        log.info("text_search_index_unavailable", reason=str(err),
                 effect="q= searches read every event summary")

