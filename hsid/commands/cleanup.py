"""`hsid cleanup [--dry-run]`: the retention cleanup, once, now."""

from __future__ import annotations

import json
from typing import TextIO

from hsid.core.config import Config
from hsid.core.db import create_pool
from hsid.upkeep.cleanup import run_cleanup


async def cleanup_command(config: Config, dry_run: bool, out: TextIO) -> int:
    """One run now, its statistics as JSON on `out`.

    Raises Unavailable when the database cannot be reached. It takes no lock: a run beside
    the daemon's is safe (each row is deleted once) and an operator asked for it.
    """
    pool = await create_pool(config.database)
    try:
        stats = await run_cleanup(pool, config.retention, config.paths, dry_run)
    finally:
        await pool.close()
    out.write(json.dumps(stats.to_dict(), indent=2) + "\n")
    return 0
