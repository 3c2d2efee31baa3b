"""Shared fixtures: a private PostgreSQL database and Redis database per test run, real stores.

The servers are the ones running on the machine (127.0.0.1:5432 trust auth, 127.0.0.1:6379);
HSID_TEST_PG_URL and HSID_TEST_REDIS_URL point elsewhere. Each run creates its own database,
drops it at the end, claims a free Redis database number, and puts its own redis.prefix before
every key and channel (channels ignore the database number), so parallel runs never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import seed_default_prompt
from hsid.core.config import Config, load_config
from hsid.core.context import StageContext
from hsid.core.db import apply_schema, create_pool
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.embedded import EmbeddedPostgres, EmbeddedRedis, server_pids
from hsid.pipeline.analyze_worker import AnalyzeWorker
from tests.alerts.receivers import Receiver, serve_receiver

REPO_ROOT = Path(__file__).resolve().parent.parent

PG_ADMIN_URL = os.environ.get("HSID_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("HSID_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_CLAIM_PREFIX = "hsid-test-claim:"
REDIS_CLAIM_TTL_SECONDS = 4 * 3600


def _database_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A private database for this test run with schema.sql applied; dropped afterwards."""
    name = f"hsid_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(name))
    url = _database_url(name)

    async def prepare() -> None:
        pool = await create_pool(Config().database, url)
        try:
            await apply_schema(pool)
        finally:
            await pool.close()

    asyncio.run(prepare())
    yield url
    asyncio.run(_drop_database(name))


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """An empty database of its own (no schema), for tests of start-up and schema.sql."""
    name = f"hsid_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(name))
    yield _database_url(name)
    asyncio.run(_drop_database(name))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number nobody else is using, claimed in db 0 and released afterwards."""
    admin = redis_sync.Redis.from_url(REDIS_BASE_URL + "/0")
    token = uuid.uuid4().hex
    for number in range(1, 16):
        if admin.set(f"{REDIS_CLAIM_PREFIX}{number}", token, nx=True, ex=REDIS_CLAIM_TTL_SECONDS):
            break
    else:
        pytest.fail("no free Redis database number (1-15) for this test run")
    url = f"{REDIS_BASE_URL}/{number}"
    redis_sync.Redis.from_url(url).flushdb()
    yield url
    redis_sync.Redis.from_url(url).flushdb()
    if admin.get(f"{REDIS_CLAIM_PREFIX}{number}") == token.encode():
        admin.delete(f"{REDIS_CLAIM_PREFIX}{number}")


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """This run's redis.prefix: pub/sub channels are shared by every database number, so
    without it a daemon or another run on the same Redis would receive this run's events."""
    return f"hsid-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def keyspace(redis_prefix: str) -> Keyspace:
    """The run's Redis names, for tests that build queues, keys or channels themselves."""
    return Keyspace(redis_prefix)


TABLES = (
    "alerts", "alert_rules", "zones", "activity_baselines", "class_baselines", "audit_logs",
    "entities", "prompt_versions", "prompt_configs", "scene_changes", "user_calibrations",
    "gpu_stats", "logs", "api_keys", "snapshots", "entity_detections", "detections", "events",
    "cameras",
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the run's database; every table is emptied after the test."""
    pool = await create_pool(Config().database, database_url)
    try:
        yield pool
    finally:
        await pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        await pool.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the run's Redis database, flushed before and after the test."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A fresh directory the embedded servers' account can reach; no servers left afterwards.

    Not tmp_path: pytest makes its base 0700, and a root test run starts the servers as
    another user (PostgreSQL refuses root), who could not get in.
    """
    path = Path(tempfile.mkdtemp(prefix="hsid-embedded-"))
    path.chmod(0o755)
    yield path
    for server in (EmbeddedPostgres(path / "pg"), EmbeddedRedis(path / "redis")):
        for pid in embedded_pids(server):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def embedded_pids(server: EmbeddedPostgres | EmbeddedRedis) -> list[int]:
    """The server's processes, found the way a restarting hsid finds leftovers."""
    directory = server.data_dir if isinstance(server, EmbeddedPostgres) else server.root
    return server_pids(directory, server.program)


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models, built by the same script a developer runs, so the script stays
    working. Readable by any account (the embedded servers' user included)."""
    dest = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make-test-models"), str(dest)],
                   check=True, timeout=120)
    return {"detector": dest / "tiny-detector.onnx", "llm": dest / "tiny-llm.gguf"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def camera_root(tmp_path: Path) -> Path:
    path = tmp_path / "cameras"
    path.mkdir()
    return path


@pytest.fixture
def overlay_root(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on an overlayfs this test mounts (its lower, upper and work folders in
    tmp_path), unmounted afterwards; skipped, saying why, where mounting is not permitted
    (not root, no overlay support, a container without CAP_SYS_ADMIN)."""
    layers = {name: tmp_path / "overlay" / name for name in ("lower", "upper", "work", "merged")}
    for path in layers.values():
        path.mkdir(parents=True)
    if (mount := shutil.which("mount")) is None:
        pytest.skip("cannot mount an overlay: no mount command")
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    mounted = subprocess.run([mount, "-t", "overlay", "overlay", "-o", options,
                              str(layers["merged"])], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mounting an overlay is not permitted here: {mounted.stderr.strip()}")
    try:
        yield layers["merged"]
    finally:
        subprocess.run(["umount", "--lazy", str(layers["merged"])], check=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def config(database_url: str, redis_url: str, redis_prefix: str, camera_root: Path,
           state_dir: Path) -> Config:
    """A configuration on the test stores and folders, read the way the daemon reads it."""
    return load_config(
        None,
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "HSID_REDIS__PREFIX": redis_prefix,
            "HSID_PATHS__CAMERA_ROOT": str(camera_root),
            "HSID_PATHS__STATE_DIR": str(state_dir),
            "HSID_API__PORT": str(free_port()),
        },
    )


@contextlib.asynccontextmanager
async def running_analyzer(config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                           keyspace: Keyspace, worker: str = "test-analyze",
                           ) -> AsyncIterator[ReliableQueue]:
    """An analyze worker running on the test stores, scoring by the rules (no model);
    yields the analysis_queue it consumes, and stops it afterwards."""
    await seed_default_prompt(db)
    scorer = RiskScorer(config.analyzer)
    await scorer.load()
    queue = ReliableQueue(redis, "analysis_queue", worker, config.queues, keyspace=keyspace)
    stopping = asyncio.Event()
    task = asyncio.create_task(
        AnalyzeWorker(StageContext(config, db, redis, keyspace, stopping=stopping), queue,
                      scorer).run())
    try:
        yield queue
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def analysis(config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace
                   ) -> AsyncIterator[ReliableQueue]:
    """A running analyze worker (running_analyzer) for the test."""
    async with running_analyzer(config, db, redis, keyspace) as queue:
        yield queue


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 that records each request (alerts, Home Assistant)."""
    async with serve_receiver() as running:
        yield running
