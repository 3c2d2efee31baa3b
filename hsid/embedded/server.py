"""What both embedded servers share: a private root held by one hsid, its sockets, leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from hsid.core.errors import Unavailable
from hsid.embedded.processes import (
    ServerUser,
    check_access,
    kill_stragglers,
    server_pids,
    server_user,
)

log = structlog.get_logger(__name__)

# --- Layout and sockets --------------------------------------------------------------------
LOCK_FILE = "hsid.lock"
# sun_path holds 108 bytes with the terminating NUL; both servers refuse longer paths.
MAX_SOCKET_PATH_BYTES = 107
# Short enough for any socket name; under systemd's PrivateTmp it is private to the unit.
SHORT_SOCKET_PARENT = Path("/tmp")


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


async def end_leftovers(
    server: EmbeddedServer, directory: Path, polite: Callable[[list[int]], Awaitable[None]]
) -> None:
    """Stop servers a killed hsid left running in `directory`: politely, then SIGKILL.

    Only called while holding the directory's lock, so no live hsid owns them.
    """
    pids = await asyncio.to_thread(server_pids, directory, server.program)
    if not pids:
        return
    log.warning("embedded_store_leftover", store=server.store, path=str(directory), pids=pids)
    await polite(pids)
    await kill_stragglers(directory, server.program)


def log_tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class EmbeddedServer:
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
            await check_access(self.user, self.root)
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
