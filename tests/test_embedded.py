"""Embedded stores: private PostgreSQL and redis-server on unix sockets, from real binaries."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core.broker import connect_redis
from hsid.core.config import Config
from hsid.core.db import apply_schema, create_pool
from hsid.core.errors import Unavailable
from hsid.embedded import (
    PG_SOCKET_NAME,
    EmbeddedPostgres,
    EmbeddedRedis,
    ServerUser,
    find_postgres_bin,
    find_redis_server,
    server_user,
    socket_dir,
    start_embedded_stores,
    store_modes,
)
from tests.conftest import embedded_pids

needs_postgres = pytest.mark.skipif(
    find_postgres_bin() is None, reason="no PostgreSQL server binaries (initdb, pg_ctl, postgres)")
needs_redis = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a root hsid switches users")

# A stand-in for `hsid run`: starts both stores, prints their URLs, then waits to be killed.
HSID_THAT_CRASHES = """
import asyncio, sys
from pathlib import Path
from hsid.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import embedded_pids

async def main() -> None:
    root = Path(sys.argv[1])
    dsn = await EmbeddedPostgres(root / "pg").start()
    url = await EmbeddedRedis(root / "redis").start()
    print("READY", dsn, url, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def listening_tcp_ports(pids: list[int]) -> set[int]:
    """TCP ports on which any of `pids` listens (from /proc: no ss needed)."""
    listening: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A":  # TCP_LISTEN
                listening[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    ports = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:[") and (inode := target[8:-1]) in listening:
                ports.add(listening[inode])
    return ports


@needs_postgres
async def test_postgres_serves_a_unix_socket_only_and_keeps_data_across_restarts(
    embedded_dir: Path,
) -> None:
    pg = EmbeddedPostgres(embedded_dir / "pg")
    dsn = await pg.start()
    assert dsn.startswith("postgresql://postgres@/hsid?host=/")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO kept VALUES (7)")
    assert await conn.fetchval("SHOW listen_addresses") == ""
    await conn.close()
    pids = embedded_pids(pg)
    assert pids and listening_tcp_ports(pids) == set()
    await pg.stop()
    assert embedded_pids(pg) == []

    again = EmbeddedPostgres(embedded_dir / "pg")
    conn = await asyncpg.connect(await again.start())
    assert await conn.fetchval("SELECT id FROM kept") == 7
    await conn.close()
    await again.stop()
    await again.stop()  # idempotent
    assert embedded_pids(pg) == []


@needs_redis
async def test_redis_serves_a_unix_socket_only_and_keeps_data_across_restarts(
    embedded_dir: Path,
) -> None:
    server = EmbeddedRedis(embedded_dir / "redis")
    url = await server.start()
    assert url == f"unix://{server.socket}?db=0"
    client = aioredis.Redis.from_url(url)
    assert await client.ping()
    await client.rpush("detection_queue", "job-1")
    assert await client.config_get("appendonly") == {"appendonly": "yes"}
    await client.aclose()
    pids = embedded_pids(server)
    assert pids and listening_tcp_ports(pids) == set()
    await server.stop()
    assert embedded_pids(server) == []

    again = EmbeddedRedis(embedded_dir / "redis")
    client = aioredis.Redis.from_url(await again.start())
    assert await client.lrange("detection_queue", 0, -1) == [b"job-1"]
    await client.aclose()
    await again.stop()
    assert embedded_pids(server) == []


@needs_redis
async def test_recovery_spares_other_programs_working_in_the_store_directory(
    embedded_dir: Path,
) -> None:
    root = embedded_dir / "redis"
    root.mkdir()
    bystander = await asyncio.create_subprocess_exec("sleep", "60", cwd=root)  # a shell, say
    try:
        server = EmbeddedRedis(root)
        await server.start()
        await server.stop()
        assert bystander.returncode is None
    finally:
        bystander.kill()
        await bystander.wait()


@needs_redis
async def test_a_second_hsid_on_the_same_store_is_refused_and_harms_nothing(
    embedded_dir: Path,
) -> None:
    first = EmbeddedRedis(embedded_dir / "redis")
    client = aioredis.Redis.from_url(await first.start())
    with pytest.raises(Unavailable, match="another hsid process"):
        await EmbeddedRedis(embedded_dir / "redis").start()
    assert await client.ping()
    await client.aclose()
    await first.stop()


@needs_redis
async def test_a_socket_path_too_long_for_sun_path_moves_to_a_short_directory(
    embedded_dir: Path,
) -> None:
    root = embedded_dir / ("deep" * 30) / "redis"
    server = EmbeddedRedis(root)
    assert server.socket.parent == socket_dir(root, "redis.sock")
    assert server.socket.parent.parent == Path("/tmp")
    try:
        client = aioredis.Redis.from_url(await server.start())
        assert await client.ping()
        await client.aclose()
        await server.stop()
    finally:
        shutil.rmtree(server.socket.parent, ignore_errors=True)
    long_pg_root = embedded_dir / ("deep" * 30) / "pg"
    assert len(str(EmbeddedPostgres(long_pg_root).socket_dir / PG_SOCKET_NAME)) <= 107


@needs_root
@needs_redis
async def test_a_root_hsid_hands_its_state_dir_to_the_server_account(embedded_dir: Path) -> None:
    root = embedded_dir / "redis"
    root.mkdir()
    (root / "appendonlydir").mkdir()
    os.chown(root, 65534, 65534)  # left by a run as another account
    server = EmbeddedRedis(root)
    client = aioredis.Redis.from_url(await server.start())
    assert await client.ping()
    await client.aclose()
    await server.stop()
    assert server.user is not None and server.user.name != "root"
    assert root.stat().st_uid == (root / "appendonlydir").stat().st_uid == server.user.uid


@needs_root
@needs_redis
async def test_a_short_socket_directory_planted_by_a_user_is_refused(embedded_dir: Path) -> None:
    server = EmbeddedRedis(embedded_dir / ("deep" * 30) / "redis")
    planted = server.socket.parent
    planted.mkdir(mode=0o700)
    try:
        os.chown(planted, 65534, 65534)
        if server_user() == ServerUser("nobody", 65534, 65534):
            pytest.skip("the server account is nobody itself")
        with pytest.raises(Unavailable, match="belongs to uid 65534"):
            await server.start()
    finally:
        shutil.rmtree(planted, ignore_errors=True)


def start_crashing_hsid(root: Path) -> tuple[subprocess.Popen[str], str, str]:
    child = subprocess.Popen([sys.executable, "-c", HSID_THAT_CRASHES, str(root)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("READY "):
            _, dsn, url = line.split()
            return child, dsn, url
    raise AssertionError(f"the stand-in hsid exited ({child.wait()}) before starting the stores")


@needs_postgres
@needs_redis
@pytest.mark.parametrize("servers_killed_too", [False, True], ids=["servers_left", "all_killed"])
async def test_a_start_after_hsid_was_killed_recovers_the_stores_and_their_data(
    embedded_dir: Path, servers_killed_too: bool
) -> None:
    child, dsn, url = start_crashing_hsid(embedded_dir)
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (id int)")
    await conn.execute("INSERT INTO kept VALUES (1)")
    await conn.close()
    client = aioredis.Redis.from_url(url)
    await client.rpush("analysis_queue", "job-1")
    await client.aclose()
    pg, redis_server = EmbeddedPostgres(embedded_dir / "pg"), EmbeddedRedis(embedded_dir / "redis")
    child.kill()
    child.wait()
    if servers_killed_too:  # a power cut, or the OOM killer: pid files and locks left behind
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        for pid in (postmaster, *embedded_pids(redis_server)):
            os.kill(pid, signal.SIGKILL)
    else:
        assert embedded_pids(pg) and embedded_pids(redis_server)

    conn = await asyncpg.connect(await pg.start())
    assert await conn.fetchval("SELECT id FROM kept") == 1
    await conn.close()
    client = aioredis.Redis.from_url(await redis_server.start())
    assert await client.lrange("analysis_queue", 0, -1) == [b"job-1"]
    await client.aclose()
    await redis_server.stop()
    await pg.stop()
    assert embedded_pids(pg) == [] and embedded_pids(redis_server) == []


@needs_postgres
@needs_redis
async def test_start_embedded_stores_fills_in_the_urls_and_stops_the_servers_on_exit(
    embedded_dir: Path,
) -> None:
    config = Config().with_overrides({"paths": {"state_dir": str(embedded_dir)}})
    with capture_logs() as logs:
        async with AsyncExitStack() as stack:
            filled = await start_embedded_stores(config, stack)
            pool = await create_pool(filled.database)
            await apply_schema(pool)
            await pool.close()
            client = await connect_redis(filled.redis)
            await client.aclose()
    started = [e for e in logs if e["event"] == "embedded_store_started"]
    assert {e["store"] for e in started} == {"database", "redis"}
    assert all(e["mode"] == "embedded" for e in started)
    embedded = embedded_dir / "embedded"
    assert embedded_pids(EmbeddedPostgres(embedded / "pg")) == []
    assert embedded_pids(EmbeddedRedis(embedded / "redis")) == []


async def test_configured_urls_start_nothing_and_say_so() -> None:
    config = Config().with_overrides({"database": {"url": "postgresql://db.example/hsid"},
                                      "redis": {"url": "redis://cache.example/0"}})
    with capture_logs() as logs:
        async with AsyncExitStack() as stack:
            assert await start_embedded_stores(config, stack) is config
    assert [(e["event"], e["store"], e["mode"]) for e in logs] == [
        ("store_mode", "database", "configured URL"), ("store_mode", "redis", "configured URL")]
    assert store_modes(config) == {"database": "configured URL", "redis": "configured URL"}


@needs_postgres
@needs_redis
def test_store_modes_names_the_embedded_servers_and_where_they_keep_data(
    embedded_dir: Path,
) -> None:
    modes = store_modes(Config().with_overrides({"paths": {"state_dir": str(embedded_dir)}}))
    assert modes["database"].startswith("embedded PostgreSQL (")
    assert modes["database"].endswith(f"in {embedded_dir / 'embedded' / 'pg'}")
    assert modes["redis"].startswith("embedded redis-server (")


def test_a_cluster_is_only_opened_by_binaries_of_its_major_version() -> None:
    assert find_postgres_bin("1") is None  # no PostgreSQL 1 anywhere
    if (found := find_postgres_bin()) is not None:
        out = subprocess.run([str(found / "postgres"), "-V"], capture_output=True, text=True)
        major = out.stdout.split(")")[1].split(".")[0].strip()
        assert find_postgres_bin(major) == found


async def test_a_redis_server_that_cannot_start_says_why(embedded_dir: Path) -> None:
    server = EmbeddedRedis(embedded_dir / "redis", binary=shutil.which("false"))
    with pytest.raises(Unavailable, match=r"redis-server exited \(1\)"):
        await asyncio.wait_for(server.start(), 30)
    assert embedded_pids(server) == []
