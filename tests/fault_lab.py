"""Fault lab: the real daemon on its own private PostgreSQL and redis-server, a steady stream
of camera uploads, and the figures a fault scenario is judged by.

Independent of the machine's shared stores by construction: the servers are started here
from the machine's binaries (hsid.embedded), on unix sockets in a throwaway directory, and
the daemon is handed their URLs. Only the models are tiny; nothing of hsid is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import cv2
import numpy as np
import redis.asyncio as aioredis

from hsid.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.support import Daemon, http_json

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMERA_FOLDER = "Fault Yard"
# Short batch timings (the brief's): a batch closes 2 s after it opened or 1 s after its last
# detection, so a drain takes seconds, not the production 90.
BATCH_ENV = {"HSID_BATCH__WINDOW_SECONDS": "2", "HSID_BATCH__IDLE_SECONDS": "1",
             "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2"}
READY_TIMEOUT_SECONDS = 60.0
# A daemon that cannot come up this many times in a row is broken, not unlucky: stop trying.
MAX_FAILED_STARTS = 3
# Like systemd's RestartSec, shortened: how long after an unexpected exit it is started again.
RESTART_DELAY_SECONDS = 2.0
EXIT_POLL_SECONDS = 0.1
# The kill points are windows of tens of milliseconds (an analysis with the tiny LLM), so
# Redis is looked at this often while one is awaited.
POINT_POLL_SECONDS = 0.001
LOG_LINE = re.compile(r"\[(warning|error|critical)\s*\]\s+(\S+)")
Say = Callable[[str], None]


class Skipped(Exception):
    """The machine cannot run this scenario (no server binaries, no right to mount)."""


class LabError(Exception):
    """The harness could not do its part (the daemon never came up, say)."""


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

    def __init__(self, folder: Path, count: int, rate: float, first: int = 0) -> None:
        self.folder, self.count, self.rate, self.first = folder, count, rate, first
        self.sent: list[Path] = []

    async def run(self) -> None:
        started = time.monotonic()
        for n in range(self.first, self.first + self.count):
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
            due = started + (len(self.sent)) / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))


# --- The daemon --------------------------------------------------------------------------------

class DaemonProcess:
    """`hsid run` as a child process, one log file per start. Exits we cause (kill -9, a
    SIGTERM answered with 0) are expected; any other is counted and, like systemd's
    Restart=on-failure, followed by a new start."""

    def __init__(self, env: dict[str, str], logs: Path, port: int, say: Say) -> None:
        self.env, self.logs, self.port, self.say = env, logs, port, say
        self.unexpected: list[str] = []
        self.broken: str | None = None  # set when restarting after an unexpected exit failed
        self.starts = 0
        self._daemon: Daemon | None = None
        self._lock = asyncio.Lock()
        self._intended = False

    @property
    def pid(self) -> int | None:
        return self._daemon.process.pid if self._daemon else None

    def log_files(self) -> list[Path]:
        return sorted(self.logs.glob("daemon-*.log"))

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files())

    def log_summary(self) -> str:
        """The warning and error events of every start, most frequent first."""
        counts = Counter(f"{event} ({level})" for level, event in LOG_LINE.findall(self.output()))
        return ", ".join(f"{name} x{n}" for name, n in counts.most_common(8))

    async def start(self, wait_ready: bool = True) -> None:
        """Start the daemon (and wait for it to answer health); LabError after
        MAX_FAILED_STARTS starts in a row that died before being ready."""
        async with self._lock:
            for _ in range(MAX_FAILED_STARTS):
                self._spawn()
                if not wait_ready or await self._ready():
                    return
                self._record_exit("died before it was ready")
            raise LabError(f"the daemon does not start; last log:\n{self._tail()}")

    def _spawn(self) -> None:
        self.starts += 1
        args = ["--config", str(REPO_ROOT / "config.toml"), "run"]
        self.logs.mkdir(exist_ok=True)
        self._daemon = Daemon(self.env, args, self.logs / f"daemon-{self.starts:02d}.log")
        self._intended = False

    async def _ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        url = f"http://127.0.0.1:{self.port}/api/system/health"
        while time.monotonic() < deadline:
            assert self._daemon is not None
            if self._daemon.process.poll() is not None:
                return False
            if "hsid_ready" in self._daemon.output():
                return True
            if (await asyncio.to_thread(http_json, url, 0.5))[0] == 200:
                return True
            await asyncio.sleep(0.1)
        return False

    def _tail(self, lines: int = 15) -> str:
        return "\n".join(self._daemon.output().splitlines()[-lines:]) if self._daemon else ""

    def _record_exit(self, why: str) -> None:
        assert self._daemon is not None
        code = self._daemon.process.poll()
        self.unexpected.append(f"start {self.starts}: exit {code} ({why})")
        self.say(f"  ! daemon exited by itself: status {code}, {why}; log tail:\n{self._tail(6)}")
        with contextlib.suppress(AssertionError):
            self._daemon.stop(timeout=5)

    async def watch(self) -> None:
        """Until cancelled: count exits nobody asked for and start the daemon again."""
        while True:
            await asyncio.sleep(EXIT_POLL_SECONDS)
            daemon = self._daemon
            if daemon is None or self._intended or daemon.process.poll() is None:
                continue
            async with self._lock:
                if self._daemon is not daemon or self._intended:
                    continue
                self._record_exit("while running")
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            try:
                await self.start()
            except LabError as err:
                self.broken = str(err)
                self.say(f"  ! {err}")
                return

    async def kill9(self) -> None:
        """SIGKILL and reap; the exit is ours, not the daemon's."""
        async with self._lock:
            assert self._daemon is not None
            self._intended = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._daemon.process.pid, signal.SIGKILL)
            await asyncio.to_thread(self._daemon.process.wait)
            with contextlib.suppress(AssertionError):
                self._daemon.stop(timeout=5)

    async def terminate(self, limit: float) -> tuple[int | None, float]:
        """SIGTERM and wait up to `limit` s (systemd's TimeoutStopSec); past it, SIGKILL,
        as systemd would. Returns (exit status or None when killed, seconds taken)."""
        async with self._lock:
            assert self._daemon is not None
            self._intended = True
            process = self._daemon.process
            started = time.monotonic()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code: int | None = await asyncio.to_thread(process.wait, limit)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
                code = None
            elapsed = time.monotonic() - started
            with contextlib.suppress(AssertionError):
                self._daemon.stop(timeout=5)
            return code, elapsed

    def running(self) -> bool:
        return self._daemon is not None and self._daemon.process.poll() is None


# --- Measurement -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Figures:
    """What the stores say after (or during) a scenario, for the uploads of `sent`."""

    sent: int
    stored: int  # uploads with detection rows
    events: int
    stored_twice: int  # uploads whose detections were stored by more than one run
    in_several_events: int  # detections listed by more than one event
    unanalysed: int  # detections in no event
    dead_letters: int
    waiting: int  # items in queues and processing lists, open batches

    @property
    def lost_images(self) -> int:
        return self.sent - self.stored

    @property
    def lost(self) -> int:
        return self.lost_images + self.unanalysed

    @property
    def duplicates(self) -> int:
        return self.stored_twice + self.in_several_events


def item_ids(raw: bytes | str) -> set[str]:
    """What identifies a queue item across retries and recoveries (which may rewrite its
    JSON, adding a crash count say): its file_path or batch_id, wherever it sits."""
    try:
        item: Any = json.loads(raw)
    except ValueError:
        return {raw.decode(errors="replace") if isinstance(raw, bytes) else raw}
    found: set[str] = set()
    stack = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            found.update(str(value[k]) for k in ("file_path", "batch_id") if k in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class Stores:
    """The private PostgreSQL and redis-server, and the lab's own view of what they hold.

    Key names are matched by glob with anything in front, so a `redis.prefix` (empty here)
    changes nothing."""

    def __init__(self, root: Path) -> None:
        self.pg = EmbeddedPostgres(root / "pg")
        self.redis_server = EmbeddedRedis(root / "redis")
        self.dsn = self.redis_url = ""
        self.redis: aioredis.Redis | None = None
        self.dead_letters_flushed = 0  # DLQ entries lost when Redis came back empty

    async def start(self) -> None:
        self.dsn = await self.pg.start()
        self.redis_url = await self.redis_server.start()
        self.redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=5)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.redis_server.stop()
        await self.pg.stop()

    async def restart_redis_empty(self, down_seconds: float) -> None:
        """Stop redis-server, forget everything it held, start it again after a while: a
        Redis that keeps nothing on disk, restarted."""
        self.dead_letters_flushed += await self.dead_letters()
        await self.redis_server.stop()
        for name in ("appendonlydir", "dump.rdb"):
            target = self.redis_server.root / name
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
        await asyncio.sleep(down_seconds)
        await self.redis_server.start()

    async def _lists(self, pattern: str) -> dict[str, list[bytes]]:
        assert self.redis is not None
        keys = [k for k in await self.redis.keys(pattern)
                if await self.redis.type(k) in (b"list", "list")]
        return {_text(k): await self.redis.lrange(k, 0, -1) for k in keys}

    async def dead_letters(self) -> int:
        try:
            return sum(len(v) for v in (await self._lists("*dlq:*")).values())
        except (aioredis.RedisError, OSError):
            return 0

    async def in_flight(self, kind: str) -> set[str]:
        """Ids of what is in flight: `detection` or `analysis` items in processing lists,
        or `batch`, the camera batches open now."""
        assert self.redis is not None
        if kind == "batch":
            keys = await self.redis.keys("*batch:*:current")
            return {_text(v) for v in await self.redis.mget(keys) if v} if keys else set()
        items = await self._lists(f"*processing:{kind}_queue:*")
        return {i for raws in items.values() for raw in raws for i in item_ids(raw)}

    async def in_flight_jobs(self) -> set[str]:
        return await self.in_flight("detection") | await self.in_flight("analysis")

    async def waiting(self) -> int:
        """Queue items, in-flight items and open batches: zero once the pipeline is idle."""
        assert self.redis is not None
        lists = await self._lists("*")
        queued = sum(len(v) for k, v in lists.items() if "dlq:" not in k
                     and (k.endswith("_queue") or "processing:" in k))
        return queued + len(await self.redis.keys("*batch:*:current"))

    async def figures(self, sent: list[Path]) -> Figures:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            detections = await conn.fetch("SELECT id, file_path, detected_at FROM detections")
            events = await conn.fetch("SELECT detection_ids FROM events")
        finally:
            await conn.close()
        runs: dict[str, Counter] = {}
        for row in detections:
            runs.setdefault(row["file_path"], Counter())[row["detected_at"]] += 1
        listed = Counter(i for e in events for i in json.loads(e["detection_ids"] or "[]"))
        ids = {row["id"] for row in detections}
        return Figures(
            sent=len(sent),
            stored=sum(1 for p in sent if str(p) in runs),
            events=len(events),
            # A second run of an image stores rows at another time: more rows than its first.
            stored_twice=sum(1 for c in runs.values()
                             if sum(c.values()) > c[min(c)]),
            in_several_events=sum(1 for n in listed.values() if n > 1),
            unanalysed=len(ids - set(listed)),
            dead_letters=await self.dead_letters() + self.dead_letters_flushed,
            waiting=await self.waiting(),
        )


# --- The lab -----------------------------------------------------------------------------------

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
        if self.keep:
            self.say(f"  logs kept in {self.root / 'logs'}")
            shutil.rmtree(self.root / "pg", ignore_errors=True)
            return
        shutil.rmtree(self.root, ignore_errors=True)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def sent(self) -> list[Path]:
        return self.uploader.sent if self.uploader else []

    def upload(self, count: int, rate: float) -> asyncio.Task[None]:
        """Start the stream of uploads; the task ends when the last one is written."""
        self.uploader = Uploader(self.folder, count, rate)
        return asyncio.create_task(self.uploader.run())

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

    async def drain(self, sent: list[Path], within: float, quiet: float = 15.0) -> str:
        """Wait until every upload is stored and analysed with nothing waiting, or nothing
        has changed for `quiet` s with nothing waiting, or `within` s; says which."""
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
            if f != last:
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


# --- systemd ---------------------------------------------------------------------------------

SYSTEMD_DEFAULT_STOP_SECONDS = 90.0  # DefaultTimeoutStopSec
_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def stop_timeout_seconds(units: Path = REPO_ROOT / "systemd") -> float:
    """TimeoutStopSec= of the repository's unit (systemd's default, 90 s, if unset): how
    long a SIGTERMed daemon has before systemd kills it."""
    for unit in sorted(units.glob("*.service")):
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "TimeoutStopSec" and value.strip() != "infinity":
                parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
                return sum(float(n) * _TIME_UNITS.get(suffix, 1.0) for n, suffix in parts)
    return SYSTEMD_DEFAULT_STOP_SECONDS

