"""Numbered migrations: a database of an earlier release, with rows in it, upgraded by
apply_schema, ends up with its rows and exactly a fresh database's schema.

The earlier releases' schemas are fixtures (tests/data/schema_<commit>.sql, each schema.sql
as that commit shipped it), so the test needs no git history.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hsid.core import db as db_module
from hsid.core.config import Config
from hsid.core.db import Migration, apply_schema, create_pool, migrations
from tests.conftest import _create_database, _database_url, _drop_database

DATA = Path(__file__).resolve().parent.parent / "data"

# Releases a user may have installed: the first schema (the reference's 17 tables), and the
# last one before entities (snapshots and captured_at already there, added by that release's
# ADD COLUMN IF NOT EXISTS).
EARLIER = {
    "b45dcc4": DATA / "schema_b45dcc4.sql",
    "8e99a87": DATA / "schema_8e99a87.sql",
}

# The whole shape of the public schema, from information_schema and the catalog: every
# column in its place with type, default, nullability and identity; every constraint and
# index with its full definition.
COLUMNS_SQL = """
SELECT table_name, ordinal_position, column_name, data_type, udt_name,
       character_maximum_length, numeric_precision, column_default, is_nullable,
       is_identity, identity_generation
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, ordinal_position
"""
CONSTRAINTS_SQL = """
SELECT t.relname AS table_name, k.conname, k.contype::text, pg_get_constraintdef(k.oid) AS def,
       k.condeferrable, k.convalidated
FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'
ORDER BY 1, 2
"""
INDEXES_SQL = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2
"""
TABLES_SQL = """
SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public'
ORDER BY 1
"""


async def shape(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(row) for row in await conn.fetch(sql)]
            for name, sql in (("tables", TABLES_SQL), ("columns", COLUMNS_SQL),
                              ("constraints", CONSTRAINTS_SQL), ("indexes", INDEXES_SQL))}


@pytest.fixture
async def reference_shape() -> AsyncIterator[dict[str, list[tuple[Any, ...]]]]:
    """The shape of a fresh database that apply_schema created."""
    name = f"hsid_test_{uuid.uuid4().hex[:12]}"
    await _create_database(name)
    try:
        pool = await create_pool(Config().database, _database_url(name))
        try:
            assert (await apply_schema(pool)).created
            async with pool.acquire() as conn:
                reference = await shape(conn)
        finally:
            await pool.close()
        yield reference
    finally:
        await _drop_database(name)


async def _old_rows(conn: asyncpg.Connection) -> None:
    """Rows an install of an earlier release holds, in the tables they all have."""
    await conn.execute("INSERT INTO cameras (id, name, folder_path, status) "
                       "VALUES ('front', 'Front', '/cams/front', 'offline')")
    await conn.execute("INSERT INTO detections (camera_id, file_path, object_type, confidence) "
                       "VALUES ('front', '/cams/front/a.jpg', 'person', 0.9), "
                       "       ('front', '/cams/front/b.jpg', 'car', 0.5)")
    event = await conn.fetchval(
        "INSERT INTO events (batch_id, camera_id, started_at, risk_score, risk_level, summary,"
        " detection_ids) VALUES ('b1', 'front', now(), 70, 'high', 'someone', '[1, 2]')"
        " RETURNING id")
    rule = await conn.fetchval(
        "INSERT INTO alert_rules (name, severity, risk_threshold) VALUES ('night', 'high', 60)"
        " RETURNING id")
    await conn.execute("INSERT INTO alerts (event_id, rule_id, dedup_key) VALUES ($1, $2, 'k')",
                       event, rule)
    await conn.execute("INSERT INTO zones (id, camera_id, name, coordinates) "
                       "VALUES ('door', 'front', 'Door', '[[0, 0], [1, 1]]')")
    await conn.execute("INSERT INTO entities (entity_type, trust_status) "
                       "VALUES ('person', 'trusted')")
    await conn.execute("INSERT INTO logs (level, component, message) "
                       "VALUES ('INFO', 'test', 'before the upgrade')")


async def _rows(conn: asyncpg.Connection, tables: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")]
            for t in tables}


@pytest.fixture(params=sorted(EARLIER))
async def earlier_database(
    request: pytest.FixtureRequest, fresh_database_url: str,
) -> AsyncIterator[str]:
    """A database as an install of an earlier release left it, with rows; its URL."""
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(EARLIER[request.param].read_text(encoding="utf-8"))
        await _old_rows(conn)
    finally:
        await conn.close()
    yield fresh_database_url


async def test_an_earlier_release_is_upgraded_to_exactly_the_fresh_schema_with_its_rows(
    earlier_database: str, reference_shape: dict[str, list[tuple[Any, ...]]],
) -> None:
    conn = await asyncpg.connect(earlier_database)
    try:
        old_tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        before = await _rows(conn, old_tables)
    finally:
        await conn.close()

    pool = await create_pool(Config().database, earlier_database)
    try:
        result = await apply_schema(pool)
        again = await apply_schema(pool)
    finally:
        await pool.close()
    conn = await asyncpg.connect(earlier_database)  # as the rows were read before
    try:
        upgraded = await shape(conn)
        after = await _rows(conn, old_tables)
        recorded = [tuple(r) for r in await conn.fetch(
            "SELECT version, name FROM schema_migrations ORDER BY version")]
        new_id = await conn.fetchval(
            "INSERT INTO detections (camera_id, file_path) VALUES ('front', '/c.jpg')"
            " RETURNING id")
    finally:
        await conn.close()

    known = migrations()
    assert result.applied == tuple(m.label for m in known)
    assert result.describe() == "migrations applied: " + ", ".join(m.label for m in known)
    assert again.describe() == "schema current"
    assert recorded == [(m.version, m.name) for m in known]
    assert upgraded == reference_shape

    # The rows are all there, each as it was plus the new columns' values for old rows.
    added = {"detections": {"captured_at": None}, "alert_rules": {"skip_trusted_entities": True}}
    for table, rows in before.items():
        expected = [{**row, **added.get(table, {})} for row in rows]
        assert after[table] == expected, table
    assert new_id == 3, "identities continue after the old rows"


async def test_a_fresh_database_gets_the_schema_with_every_migration_recorded(
    fresh_database_url: str,
) -> None:
    pool = await create_pool(Config().database, fresh_database_url)
    try:
        first = await apply_schema(pool)
        second = await apply_schema(pool)
        recorded = [tuple(r) for r in await pool.fetch(
            "SELECT version, name FROM schema_migrations ORDER BY version")]
    finally:
        await pool.close()
    assert (first.created, first.applied, first.describe()) == (True, (), "schema created")
    assert (second.created, second.applied, second.describe()) == (False, (), "schema current")
    assert recorded == [(m.version, m.name) for m in migrations()]


async def test_a_failing_migration_is_rolled_back_and_not_recorded(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    await conn.execute(EARLIER["b45dcc4"].read_text(encoding="utf-8"))
    await conn.close()
    broken = Migration(9999, "broken", "ALTER TABLE cameras ADD COLUMN half_done integer;"
                                       " SELECT 1 / 0;")
    monkeypatch.setattr(db_module, "migrations", lambda: [*migrations(), broken])

    pool = await create_pool(Config().database, fresh_database_url)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_schema(pool)
        recorded = [r["version"] for r in await pool.fetch(
            "SELECT version FROM schema_migrations ORDER BY version")]
        half_done = await pool.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'half_done'")
        monkeypatch.undo()
        retried = await apply_schema(pool)
        # The lock was given back with the failing connection's return to the pool.
        locked = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
            db_module.SCHEMA_LOCK_ID)
    finally:
        await pool.close()
    assert recorded == [m.version for m in migrations()]  # those before it stay applied
    assert half_done == 0
    assert retried.describe() == "schema current"
    assert locked == 0


async def test_processes_starting_together_apply_each_migration_once(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    await conn.execute(EARLIER["b45dcc4"].read_text(encoding="utf-8"))
    await conn.close()
    pools = [await create_pool(Config().database, fresh_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_schema(pool) for pool in pools))
    finally:
        for pool in pools:
            await pool.close()
    labels = tuple(m.label for m in migrations())
    assert sorted(r.applied for r in results) == [(), (), labels]


def test_migrations_are_numbered_in_order_and_shipped_with_the_package() -> None:
    known = migrations()
    assert [m.version for m in known] == list(range(1, len(known) + 1))
    assert all(m.sql.strip() for m in known)
    pyproject = (DATA.parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"core/migrations/*.sql"' in pyproject
