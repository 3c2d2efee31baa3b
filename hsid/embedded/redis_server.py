"""The embedded redis-server: an append-only child of hsid, reachable by unix socket only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hsid.core.errors import Unavailable
from hsid.embedded.processes import (
    INSTALL_HINT,
    POLL_SECONDS,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    as_user,
    cannot_run,
    find_redis_server,
    signal_pids,
)
from hsid.embedded.server import EmbeddedServer, end_leftovers, log_tail, socket_dir

REDIS_SOCKET_NAME = "redis.sock"


class EmbeddedRedis(EmbeddedServer):
    """A private redis-server in `root`, a child of hsid, append-only (durable queues),
    unix socket only; stop is SIGTERM (the AOF is flushed), SIGKILL after a timeout.
    """

    store = "redis"
    program = "redis-server"

    def __init__(self, root: Path, binary: str | None = None) -> None:
        super().__init__(root)
        self.socket = socket_dir(root, REDIS_SOCKET_NAME) / REDIS_SOCKET_NAME
        self.log_file = root / "redis.log"
        self.binary = binary  # None: find_redis_server() at start
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket), safe='/')}?db=0"

    def _dirs(self) -> tuple[Path, ...]:
        return (self.root, self.socket.parent)

    async def _find_binary(self) -> None:
        self.binary = self.binary or find_redis_server()
        if self.binary is None:
            raise Unavailable(f"no redis-server binary for {self.root}: {INSTALL_HINT}")

    async def _start_server(self) -> str:
        await end_leftovers(self, self.root, self._stop_leftover)
        await self._spawn()
        await self._wait_ready()
        return self.url

    async def _stop_leftover(self, pids: list[int]) -> None:
        signal_pids(pids, signal.SIGTERM)  # redis-server flushes the AOF and exits

    def _write_config(self) -> Path:
        """redis.conf, rewritten at each start so a moved socket or new default applies."""
        def q(value: Path) -> str:
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

        conf = self.root / "redis.conf"
        conf.write_text("\n".join([
            "port 0",  # no TCP listener at all
            f"unixsocket {q(self.socket)}",
            "unixsocketperm 700",
            f"dir {q(self.root)}",
            "appendonly yes",  # queued jobs survive a crash or power cut (fsync every second)
            'save ""',  # RDB snapshots would only duplicate the AOF, and a failed one blocks exit
            "daemonize no",
            'logfile ""',  # stdout, which goes to redis.log
        ]) + "\n", encoding="utf-8")
        if self.user:
            os.chown(conf, self.user.uid, self.user.gid)
        return conf

    async def _spawn(self) -> None:
        assert self.binary is not None, "start() found the binary"
        conf = await asyncio.to_thread(self._write_config)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a killed server; nothing listens on it now
        with self.log_file.open("ab") as out:
            if self.user:
                os.fchown(out.fileno(), self.user.uid, self.user.gid)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    self.binary, str(conf), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=out, cwd=self.root, **as_user(self.user),
                    # Its own session: a terminal's Ctrl-C reaches hsid, which stops it last.
                    start_new_session=True)
            except OSError as err:
                raise cannot_run(self.binary, err, self.user) from err

    async def _wait_ready(self) -> None:
        assert self._process is not None, "_spawn() started it"
        # No client-side retries: this loop polls, and notices a server that died meanwhile.
        client = aioredis.Redis(unix_socket_path=str(self.socket), retry=Retry(NoBackoff(), 0))
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        try:
            while asyncio.get_running_loop().time() < deadline:
                if self._process.returncode is not None:
                    raise Unavailable(f"redis-server exited ({self._process.returncode}): "
                                      f"{log_tail(self.log_file)}")
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await client.ping():  # answers only once the AOF is loaded
                        return
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await client.aclose()
        raise Unavailable(f"redis-server not ready in {START_TIMEOUT_SECONDS:.0f} s: "
                          f"{log_tail(self.log_file)}")

    async def _stop_server(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None
