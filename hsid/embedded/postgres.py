"""The embedded PostgreSQL cluster: initdb, start and stop, reachable by unix socket only."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
from pathlib import Path
from urllib.parse import quote

import asyncpg
import structlog

from hsid.core.errors import Unavailable
from hsid.embedded.processes import (
    INSTALL_HINT,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    find_postgres_bin,
    kill_stragglers,
    run_tool,
)
from hsid.embedded.server import EmbeddedServer, end_leftovers, log_tail, socket_dir

log = structlog.get_logger(__name__)

# Only names the socket file .s.PGSQL.5432 (listen_addresses is empty: no TCP at all); the
# default number lets `psql -h <socket dir>` connect without -p.
PG_SOCKET_PORT = 5432
PG_SOCKET_NAME = f".s.PGSQL.{PG_SOCKET_PORT}"
PG_DATABASE = "hsid"


def cluster_major(data_dir: Path) -> str | None:
    """The major version an existing cluster was made by, None before initdb."""
    try:
        return (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None


class EmbeddedPostgres(EmbeddedServer):
    """A private PostgreSQL cluster in `root` (data in root/data), reachable by unix socket only.

    initdb on first use, database `hsid` created if missing; stop is a fast shutdown.
    """

    store = "database"
    program = "postgres"

    def __init__(self, root: Path, bin_dir: Path | None = None) -> None:
        super().__init__(root)
        self.data_dir = root / "data"
        self.log_file = root / "server.log"
        self.socket_dir = socket_dir(root, PG_SOCKET_NAME)
        self.bin_dir = bin_dir  # None: find_postgres_bin() at start

    @property
    def dsn(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/{PG_DATABASE}?host={host}&port={PG_SOCKET_PORT}"

    def _dirs(self) -> tuple[Path, ...]:
        return (self.root, self.socket_dir)

    async def _find_binary(self) -> None:
        self.bin_dir = self.bin_dir or await asyncio.to_thread(
            find_postgres_bin, cluster_major(self.data_dir))
        if self.bin_dir is None:
            raise Unavailable(f"no PostgreSQL server binaries for {self.data_dir}: {INSTALL_HINT}")
        self.binary = str(self.bin_dir)

    async def _start_server(self) -> str:
        if cluster_major(self.data_dir) is None:
            await self._initdb()
        await end_leftovers(self, self.data_dir, self._stop_leftover)
        await asyncio.to_thread(self._remove_stale_locks)
        options = shlex.join([
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "unix_socket_permissions=0700", "-p", str(PG_SOCKET_PORT),
        ])
        try:
            await self._pg_ctl("start", "-w", "-t", str(int(START_TIMEOUT_SECONDS)),
                               "-l", str(self.log_file), "-o", options)
        except Unavailable as err:
            raise Unavailable(f"{err}; server log: {log_tail(self.log_file)}") from err
        await self._ensure_database()
        return self.dsn

    async def _initdb(self) -> None:
        # Made aside and renamed: a kill during initdb leaves no half-made cluster in data/.
        staging = self.root / "data.initdb"
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
        await run_tool([str(self._tool("initdb")), "-D", str(staging), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C"], self.user, self.root)
        staging.rename(self.data_dir)
        log.info("embedded_store_initialised", store=self.store, path=str(self.data_dir))

    async def _stop_leftover(self, pids: list[int]) -> None:
        with contextlib.suppress(Unavailable):  # the postmaster may be dead, its backends not
            await self._pg_ctl("stop", "-m", "fast", "-w")

    def _remove_stale_locks(self) -> None:
        """Drop lock files of a server that died; no process of this cluster runs now.

        PostgreSQL clears them itself only when their pid is gone, but a killed postmaster
        can linger as a zombie and a pid can be reused, and then it refuses to start.
        """
        for stale in (self.data_dir / "postmaster.pid", self.socket_dir / f"{PG_SOCKET_NAME}.lock"):
            if stale.exists():
                log.warning("embedded_store_stale_lock", store=self.store, path=str(stale))
                stale.unlink()

    async def _ensure_database(self) -> None:
        try:
            conn = await asyncpg.connect(host=str(self.socket_dir), port=PG_SOCKET_PORT,
                                         user="postgres", database="postgres")
        except (OSError, asyncpg.PostgresError) as err:
            raise Unavailable(f"embedded PostgreSQL unreachable: {err}") from err
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                       PG_DATABASE):
                await conn.execute(f"CREATE DATABASE {PG_DATABASE}")  # a constant name
        finally:
            await conn.close()

    def _tool(self, name: str) -> Path:
        assert self.bin_dir is not None, "start() finds the binaries first"
        return self.bin_dir / name

    async def _pg_ctl(self, *args: str) -> str:
        return await run_tool([str(self._tool("pg_ctl")), args[0], "-D", str(self.data_dir),
                               *args[1:]], self.user, self.root)

    async def _stop_server(self) -> None:
        with contextlib.suppress(Unavailable):  # nothing to stop after a failed start
            await self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_SECONDS)))
        await kill_stragglers(self.data_dir, self.program)
