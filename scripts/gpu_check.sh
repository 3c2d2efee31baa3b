#!/usr/bin/env bash
# GPU monitor check for a machine with an NVIDIA GPU: runs hsid's GpuMonitor for 15 s
# against the database in DATABASE_URL (schema applied first; it is idempotent), then
# prints the gpu_stats rows it wrote and the health figures. Exits 1 when no row came.
#
# Usage: DATABASE_URL=postgresql://user@host/db scripts/gpu_check.sh [seconds]
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to the database the rows go to}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
exec "$PYTHON" - "${1:-15}" <<'PY'
import asyncio
import os
import sys
from datetime import UTC, datetime

import redis.asyncio as aioredis

from hsid.core.config import Config, GpuConfig
from hsid.core.context import StageContext
from hsid.core.db import apply_schema, create_pool
from hsid.upkeep.gpu import GpuMonitor, sample_gpu
from hsid.core.health import Health
from hsid.core.keyspace import Keyspace

SELECT_SINCE = """
SELECT recorded_at, gpu_name, gpu_utilization, memory_used, memory_total, temperature,
       power_usage, inference_fps
FROM gpu_stats WHERE recorded_at >= $1 ORDER BY id
"""


async def main(seconds: float) -> int:
    print("sample_gpu():", sample_gpu())
    pool = await create_pool(Config().database, os.environ["DATABASE_URL"])
    try:
        await apply_schema(pool)
        started, health, stopping = datetime.now(UTC), Health(), asyncio.Event()
        # The monitor needs no Redis: the client below never connects.
        context = StageContext(Config(gpu=GpuConfig(poll_seconds=1.0)), pool, aioredis.Redis(),
                               Keyspace(""), health=health, stopping=stopping)
        monitor = GpuMonitor(context, lambda: 12.5)
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(seconds)
        stopping.set()
        await asyncio.wait_for(task, 5)
        rows = await pool.fetch(SELECT_SINCE, started)
    finally:
        await pool.close()
    for row in rows:
        print(dict(row))
    print(f"{len(rows)} gpu_stats rows in {seconds:g} s; health gpu = {health.info.get('gpu')}")
    return 0 if rows else 1


sys.exit(asyncio.run(main(float(sys.argv[1]))))
PY
