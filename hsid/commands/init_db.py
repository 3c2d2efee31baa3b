"""`hsid init-db`: bring the configured database to this release's schema, and say how.

A fresh database gets schema.sql; an existing one the numbered migrations it has not had
(hsid/core/migrations/), then schema.sql. The daemon does the same at every start-up; this
command lets an operator do it, and see what was done, before starting it.
"""

from __future__ import annotations

from typing import TextIO

from hsid.core.config import Config
from hsid.core.db import apply_schema, create_pool


async def init_db_command(config: Config, out: TextIO) -> int:
    """Apply the schema; prints "schema created", "migrations applied: NNNN_name, ..." or
    "schema current". Raises Unavailable when the database cannot be reached."""
    pool = await create_pool(config.database)
    try:
        result = await apply_schema(pool)
    finally:
        await pool.close()
    out.write(result.describe() + "\n")
    return 0
