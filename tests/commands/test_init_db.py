"""`hsid init-db`: creates or upgrades the schema and says which it did."""

from __future__ import annotations

import io

import asyncpg

from hsid.commands.init_db import init_db_command
from hsid.core.config import load_config
from hsid.core.db import migrations
from tests.core.test_migrations import EARLIER


async def _init_db(url: str) -> str:
    out = io.StringIO()
    assert await init_db_command(load_config(None, {"DATABASE_URL": url}), out) == 0
    return out.getvalue()


async def test_init_db_names_the_migrations_it_ran_on_an_earlier_release(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(EARLIER["b45dcc4"].read_text(encoding="utf-8"))
    finally:
        await conn.close()

    first = await _init_db(fresh_database_url)
    second = await _init_db(fresh_database_url)

    labels = ", ".join(m.label for m in migrations())
    assert first == f"migrations applied: {labels}\n"
    assert second == "schema current\n"


async def test_init_db_on_an_empty_database_creates_the_schema(fresh_database_url: str) -> None:
    assert await _init_db(fresh_database_url) == "schema created\n"
