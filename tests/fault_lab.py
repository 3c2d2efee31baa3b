"""Fault lab: the real daemon on its own private PostgreSQL and redis-server, with a steady
stream of camera uploads, for one fault scenario at a time.

Independent of the machine's shared stores by construction: the servers are started here
from the machine's binaries (hsid.embedded), on unix sockets in a throwaway directory, and
the daemon is handed their URLs. Only the models are tiny; nothing of hsid is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import asyncpg
import cv2
import numpy as np
import redis.asyncio as aioredis

from tests.fault_daemon import REPO_ROOT, DaemonProcess, Say, stop_timeout_seconds
from tests.fault_stores import Figures, Stores
from tests.support import http_json

CAMERA_FOLDER = "Fault Yard"
# Short batch timings (the brief's): a batch closes 2 s after it opened or 1 s after its last
# detection, so a drain takes seconds, not the production 90.
BATCH_ENV = {"HSID_BATCH__WINDOW_SECONDS": "2", "HSID_BATCH__IDLE_SECONDS": "1",
             "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2"}
# The kill points are windows of tens of milliseconds (an analysis with the tiny LLM), so
# Redis is looked at this often while one is awaited.
POINT_POLL_SECONDS = 0.001
# A drain ends early only after this long without progress: longer than hsid's longest wait
# between retries (backoffs cap at 60 s), so a stage waiting out its backoff is not taken
# for one that lost its work.
DRAIN_QUIET_SECONDS = 65.0


class Skipped(Exception):
    """The machine cannot run this scenario (no server binaries, no right to mount)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Uploads -----------------------------------------------------------------------------------

@cache
def _view() -> np.ndarray:
    """The camera's fixed view: texture in 60..200, so no pixel passes for a solid colour."""
    rng = np.random.default_rng(0)
    small = rng.integers(60, 200, (45, 80, 3), dtype=np.uint8)
    return cv2.resize(small, (640, 360), interpolation=cv2.INTER_CUBIC)


def frame(n: int) -> bytes:
    """Upload n: the fixed view with one solid patch, so the tiny detector finds exactly one
    object: every tenth a person at 0.95 (fast path), the rest cars and dogs (batched). The
    patch's place depends on n, so no two uploads share content (dedupe would drop one)."""
    image = _view().copy()
    bgr = (0, 0, 255) if n % 10 == 0 else ((255, 0, 0) if n % 2 else (0, 255, 0))
    x, y = 20 + (n * 37) % 540, 20 + (n * 13) % 200
    image[y:y + 120, x:x + 60] = bgr
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def _write_renamed(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    partial.rename(path)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


class Uploader:
    """Writes `count` frames into a camera folder at `rate` a second the way FTP servers
    do: most under a temporary name and then renamed, every fourth in three pieces under its
    final name. Files are written whatever the daemon's state, as a camera would."""

    def __init__(self, folder: Path, count: int, rate: float) -> None:
        self.folder, self.count, self.rate = folder, count, rate
        self.sent: list[Path] = []

    async def run(self) -> None:
        started = time.monotonic()
        for n in range(self.count):
            path = self.folder / f"snap-{n:05d}.jpg"
            data = frame(n)
            if n % 4 == 3:
                third = -(-len(data) // 3)
                for start in range(0, len(data), third):
                    await asyncio.to_thread(_append, path, data[start:start + third])
                    await asyncio.sleep(0.05)
            else:
                await asyncio.to_thread(_write_renamed, path, data)
            self.sent.append(path)
            due = started + len(self.sent) / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))


# --- The lab ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Models:
    detector: Path
    llm: Path


class Lab:
    """One scenario's world: private stores, a camera folder, a state dir (on a tiny tmpfs
    when `disk_mb` is set), and the daemon running on them. An async context manager;
    everything it started is stopped on exit, and its directory removed unless `keep`."""

    def __init__(self, models: Models, say: Say, disk_mb: int | None = None) -> None:
        self.models, self.say, self.disk_mb = models, say, disk_mb
        self.root = Path(tempfile.mkdtemp(prefix="hsid-faults-")).resolve()
        # The servers run as another account when we are root; it must reach its directory.
        self.root.chmod(0o755)
        self.folder = self.root / "cameras" / CAMERA_FOLDER
        self.state_dir = self.root / "state"
        self.stores = Stores(self.root)
        self.port = free_port()
        self.daemon: DaemonProcess | None = None
        self.uploader: Uploader | None = None
        self.keep = False
        self._stack = AsyncExitStack()
        self._started = time.monotonic()

    async def __aenter__(self) -> Lab:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _open(self) -> None:
        self._stack.callback(self._remove)
        self.folder.mkdir(parents=True)
        self.state_dir.mkdir()
        if self.disk_mb is not None:
            self._mount_tmpfs()
        await self.stores.start()
        self._stack.push_async_callback(self.stores.stop)
        self.daemon = DaemonProcess(self._env(), self.root / "logs", self.port, self.say)
        self._stack.push_async_callback(self._stop_daemon)
        await self.daemon.start()
        watcher = asyncio.create_task(self.daemon.watch())
        self._stack.push_async_callback(_cancel, watcher)

    def _env(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return {
            "PYTHONPATH": path,  # the daemon runs the hsid this lab was imported with
            "DATABASE_URL": self.stores.dsn, "REDIS_URL": self.stores.redis_url,
            "HSID_PATHS__CAMERA_ROOT": str(self.folder.parent),
            "HSID_PATHS__STATE_DIR": str(self.state_dir),
            "HSID_API__PORT": str(self.port),
            "HSID_DETECTOR__MODEL": str(self.models.detector),
            "HSID_ANALYZER__MODEL": str(self.models.llm),
            **BATCH_ENV,
        }

    def _mount_tmpfs(self) -> None:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m,mode=0755", "hsid-faults",
             str(self.state_dir)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip() or f"status {result.returncode}"
            raise Skipped(f"cannot mount a tmpfs for the state dir: {why}")
        self._stack.callback(_unmount, self.state_dir)

    async def _stop_daemon(self) -> None:
        """The last stop is a normal SIGTERM: any status but 0 in time is the daemon's."""
        assert self.daemon is not None
        if not self.daemon.running():
            return
        code, seconds = await self.daemon.terminate(stop_timeout_seconds())
        if code != 0:
            self.daemon.unexpected.append(f"final SIGTERM: status {code} after {seconds:.1f} s")

    def _remove(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for child in self.root.iterdir():
            if child.name != "logs":
                shutil.rmtree(child, ignore_errors=True)
        self.say(f"  logs kept in {self.root / 'logs'}")

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def sent(self) -> list[Path]:
        return self.uploader.sent if self.uploader else []

    def upload(self, count: int, rate: float) -> asyncio.Task[None]:
        """Start the stream of uploads; the task ends when the last one is written."""
        self.uploader = Uploader(self.folder, count, rate)
        task = asyncio.create_task(self.uploader.run())
        self._stack.push_async_callback(_cancel, task)  # a scenario that failed midway
        return task

    async def wait_for_point(self, kind: str, avoid: set[str],
                             within: float) -> tuple[set[str], set[str]]:
        """Wait until `kind` is in flight (`detection`, `analysis`, `batch`, or `job`: any
        queue item) while no job in flight is one in `avoid` (killing twice with one job in
        flight makes it a poison job on purpose). Returns (ids of `kind`, ids of every job
        in flight), or two empty sets when that did not happen within `within` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(aioredis.RedisError, OSError):
                jobs = await self.stores.in_flight_jobs()
                ids = jobs if kind == "job" else await self.stores.in_flight(kind)
                if ids and not jobs & avoid:
                    return ids, jobs
            await asyncio.sleep(POINT_POLL_SECONDS)
        return set(), set()

    async def wait_for_job(self, ident: str, within: float) -> bool:
        """Wait until the job `ident` (a file path or batch id) is in flight."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(aioredis.RedisError, OSError):
                if ident in await self.stores.in_flight_jobs():
                    return True
            await asyncio.sleep(POINT_POLL_SECONDS)
        return False

    async def report(self, every: float = 5.0) -> None:
        """Until cancelled: one progress line every `every` s."""
        while True:
            await asyncio.sleep(every)
            try:
                f = await self.stores.figures(self.sent)
                line = (f"sent={f.sent} stored={f.stored} events={f.events} "
                        f"waiting={f.waiting} dead_letters={f.dead_letters}")
            except (OSError, asyncpg.PostgresError, aioredis.RedisError, TimeoutError) as err:
                line = f"stores unreachable ({type(err).__name__})"
            assert self.daemon is not None
            self.say(f"  {self.elapsed():6.1f}s {line} exits={len(self.daemon.unexpected)}")

    async def healthy(self) -> bool:
        """The daemon answers health with 200: stores up, every stage running."""
        url = f"http://127.0.0.1:{self.port}/api/system/health"
        return (await asyncio.to_thread(http_json, url, 1.0))[0] == 200

    async def drain(self, sent: list[Path], within: float,
                    quiet: float = DRAIN_QUIET_SECONDS) -> str:
        """Wait until every upload is stored and analysed with nothing waiting, or nothing
        has changed for `quiet` s while the daemon said it was healthy (not waiting for a
        store or restarting a stage) with nothing waiting, or `within` s; says which."""
        deadline = time.monotonic() + within
        last: Figures | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                f = await self.stores.figures(sent)
            except (OSError, asyncpg.PostgresError, aioredis.RedisError, TimeoutError):
                await asyncio.sleep(1)
                continue
            if f.waiting == 0 and f.lost == 0:
                return "complete"
            if f != last or not await self.healthy():
                last, since = f, time.monotonic()
            elif f.waiting == 0 and time.monotonic() - since >= quiet:
                return f"nothing moved for {quiet:.0f} s"
            await asyncio.sleep(0.5)
        return f"still busy after {within:.0f} s"


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
