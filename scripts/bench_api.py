"""API latency bench: 100k events and 300k detections in a throwaway database, load from a
separate process, p50/p99 and requests/s per route, and the query plans behind them.

    .venv/bin/python scripts/bench_api.py [--duration 10] [--concurrency 4]

Needs the local PostgreSQL (trust auth) and Redis; HSID_BENCH_PG_URL and HSID_BENCH_REDIS_URL
point elsewhere. The database is created and dropped by the script; Redis is only read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from hsid.api.detections import LIST_DETECTIONS
from hsid.api.events import LIST_EVENTS
from hsid.api.queries import EXACT_COUNT_LIMIT, Listing, where_clause
from hsid.api.server import build_app
from hsid.core.config import Config, DatabaseConfig
from hsid.core.db import apply_schema, create_pool
from hsid.core.runtime import Runtime

PG_ADMIN_URL = os.environ.get("HSID_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HSID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
EVENTS, DETECTIONS, CAMERAS = 100_000, 300_000, 8
SPAN = timedelta(days=30)
NOW = datetime.now(UTC).replace(microsecond=0)
SUMMARIES = ("Person at the front door", "Car in the driveway", "Dog crossing the yard",
             "Delivery van stopped", "Unknown person near the garage at night")
OBJECTS = ("person", "car", "dog", "truck", "cat")
FILTERED_QUERY = {"camera_id": "cam_3", "min_risk": 60, "reviewed": False}


@dataclass(frozen=True)
class Scenario:
    name: str
    paths: list[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _levels(score: int) -> str:
    return "low" if score < 30 else "medium" if score < 60 else "high" if score < 85 else "critical"


def detection_rows(rng: random.Random) -> Iterator[tuple]:
    for i in range(1, DETECTIONS + 1):
        camera = f"cam_{i % CAMERAS}"
        at = NOW - SPAN * (1 - i / DETECTIONS)
        yield (i, camera, f"/srv/cameras/{camera}/{i}.jpg", "image/jpeg", at,
               rng.choice(OBJECTS), round(rng.uniform(0.3, 1.0), 3), 10, 20, 120, 240,
               f"/var/lib/hsid/thumbnails/{i}.jpg")


def event_rows(rng: random.Random) -> Iterator[tuple]:
    per_event = DETECTIONS // EVENTS
    for i in range(1, EVENTS + 1):
        first = (i - 1) * per_event + 1
        score = rng.randint(0, 100)
        started = NOW - SPAN * (1 - first / DETECTIONS)
        yield (i, uuid.uuid4().hex, f"cam_{first % CAMERAS}", started,
               started + timedelta(seconds=30), score, _levels(score), rng.choice(SUMMARIES),
               "bench", json.dumps(list(range(first, first + per_event))), rng.random() < 0.5,
               None, rng.random() < 0.1)


async def seed(pool: asyncpg.Pool) -> None:
    """COPY the rows in (seconds, not minutes), then VACUUM ANALYZE so that the planner has
    statistics and index-only scans have a visibility map, as a long-running install would."""
    rng = random.Random(7)
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("cameras", records=[
            (f"cam_{i}", f"Camera {i}", f"/srv/cameras/cam_{i}") for i in range(CAMERAS)],
            columns=["id", "name", "folder_path"])
        await conn.copy_records_to_table("detections", records=detection_rows(rng), columns=[
            "id", "camera_id", "file_path", "file_type", "detected_at", "object_type",
            "confidence", "bbox_x", "bbox_y", "bbox_width", "bbox_height", "thumbnail_path"])
        await conn.copy_records_to_table("events", records=event_rows(rng), columns=[
            "id", "batch_id", "camera_id", "started_at", "ended_at", "risk_score", "risk_level",
            "summary", "reasoning", "detection_ids", "reviewed", "notes", "is_fast_path"])
        for table in ("detections", "events"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT max(id) FROM {table}))")
            await conn.execute(f"VACUUM ANALYZE {table}")


def _plan_nodes(plan: dict) -> Iterator[str]:
    yield plan["Node Type"] + (f" on {plan['Index Name']}" if "Index Name" in plan else "")
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


EXPLAINED: dict[str, tuple[Listing, dict[str, dict[str, Any]]]] = {
    "events": (LIST_EVENTS, {
        "unfiltered": {}, "camera": {"camera_id": "cam_3"}, "unreviewed": {"reviewed": False},
        "risk_level": {"risk_level": "high"}, "min_risk": {"min_risk": 85},
        "combined": FILTERED_QUERY, "text search": {"q": "%van%"},
        "last 24 h": {"start": NOW - timedelta(days=1)},
    }),
    "detections": (LIST_DETECTIONS, {
        "camera": {"camera_id": "cam_3"}, "object_type": {"object_type": "dog"},
        "confidence": {"min_confidence": 0.9}, "last 24 h": {"start": NOW - timedelta(days=1)},
    }),
}


async def explain(pool: asyncpg.Pool) -> None:
    """The list routes' page and (capped) count queries as the API builds them, with their
    plans; an unfiltered list's total comes from pg_class instead, and a count that reaches
    the cap is replaced by the plan's estimate (neither is shown)."""
    for table, (listing, cases) in EXPLAINED.items():
        for name, filters in cases.items():
            where, args = where_clause(listing.filters, filters)
            n = len(args)
            page = listing.select.format(where=where, limit=f"${n + 1}", offset=f"${n + 2}")
            count = listing.count.format(where=where, cap=f"${n + 1}")
            for label, sql, params in (("page", page, [*args, 50, 0]),
                                       ("count", count, [*args, EXACT_COUNT_LIMIT])):
                plans = await pool.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *params)
                nodes = list(_plan_nodes(plans[0]["Plan"]))  # the pool decodes json
                flag = "ok " if any("Index" in node for node in nodes) else "SEQ"
                print(f"  {flag} {table:10} {name:11} {label:5} "
                      f"{plans[0]['Execution Time']:7.2f} ms  {' > '.join(nodes)}")


async def _load(base: str, paths: list[str], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        async def client(n: int, until: float, record: bool) -> None:
            nonlocal errors
            i = n
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.get(paths[i % len(paths)]) as response:
                    await response.read()
                    errors += response.status != 200
                if record:
                    latencies.append(time.perf_counter() - started)
                i += concurrency

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(client(n, warm, False) for n in range(concurrency)))
        end = time.perf_counter() + duration
        await asyncio.gather(*(client(n, end, True) for n in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "duration": duration}


def load_process(base: str, paths: list[str], concurrency: int, duration: float,
                 results: multiprocessing.Queue) -> None:
    """The load generator, in its own process so it does not share the server's loop."""
    results.put(asyncio.run(_load(base, paths, concurrency, duration)))


async def measure(base: str, scenario: Scenario, concurrency: int, duration: float) -> None:
    results: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=load_process, args=(base, scenario.paths, concurrency, duration, results))
    process.start()
    outcome: dict[str, Any] = await asyncio.to_thread(results.get)
    await asyncio.to_thread(process.join)
    ms = sorted(x * 1000 for x in outcome["latencies"])
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"  {scenario.name:38} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
          f"{len(ms) / outcome['duration']:7.0f} req/s  errors {outcome['errors']}")


def scenarios() -> list[Scenario]:
    rng = random.Random(11)
    filtered = "&".join(f"{k}={str(v).lower()}" for k, v in FILTERED_QUERY.items())
    day_ago = (NOW - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    return [
        Scenario("GET /api/events?limit=50", ["/api/events?limit=50"]),
        Scenario("GET /api/events (camera+risk+review)", [f"/api/events?limit=50&{filtered}"]),
        Scenario("GET /api/events (last 24 h)", [f"/api/events?limit=50&start={day_ago}"]),
        Scenario("GET /api/events (risk_level=high)", ["/api/events?limit=50&risk_level=high"]),
        Scenario("GET /api/events (q=van)", ["/api/events?limit=50&q=van"]),
        Scenario("GET /api/events?limit=50&offset=5000", ["/api/events?limit=50&offset=5000"]),
        Scenario("GET /api/events/{id}",
                 [f"/api/events/{rng.randint(1, EVENTS)}" for _ in range(1000)]),
        Scenario("GET /api/system/stats", ["/api/system/stats"]),
    ]


async def main(duration: float, concurrency: int) -> None:
    name = f"hsid_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    pool = redis = runner = None
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        pool = await create_pool(DatabaseConfig(pool_max=10), url)
        await apply_schema(pool)
        started = time.perf_counter()
        await seed(pool)
        print(f"seeded {EVENTS} events and {DETECTIONS} detections in "
              f"{time.perf_counter() - started:.1f} s\nquery plans (EXPLAIN ANALYZE):")
        await explain(pool)
        redis = aioredis.Redis.from_url(REDIS_URL)
        runtime = Runtime(config=Config(), stages=frozenset({"api"}), pool=pool, redis=redis)
        runner = web.AppRunner(build_app(runtime), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"load: {concurrency} connections, {duration:.0f} s per route, "
              f"{os.cpu_count()} CPUs shared by server, load generator and PostgreSQL")
        for scenario in scenarios():
            await measure(f"http://127.0.0.1:{port}", scenario, concurrency, duration)
    finally:
        if runner is not None:
            await runner.cleanup()
        if redis is not None:
            await redis.aclose()
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per route")
    parser.add_argument("--concurrency", type=int, default=4, help="connections in flight")
    options = parser.parse_args()
    asyncio.run(main(options.duration, options.concurrency))
