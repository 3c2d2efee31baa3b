"""The daemon under test as a child process: started, killed and stopped on purpose, and
after an exit nobody asked for counted and started again (as systemd's Restart= does, even
after a status 0, so that a scenario can go on measuring); its logs, one file per start."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.support import Daemon, http_json

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 60.0
# A daemon that cannot come up this many times in a row is broken, not unlucky: stop trying.
MAX_FAILED_STARTS = 3
# Like systemd's RestartSec, shortened: how long after an unexpected exit it is started again.
RESTART_DELAY_SECONDS = 2.0
EXIT_POLL_SECONDS = 0.1
# A console log line's level and event (a foreign library's message: up to its logger's name).
LOG_LINE = re.compile(r"\[(warning|error|critical)\s*\]\s+(.+?)(?:\s{2,}|\s\[|$)", re.M)
Say = Callable[[str], None]


class LabError(Exception):
    """The harness could not do its part (the daemon never came up, say)."""


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

    def log_files(self) -> list[Path]:
        return sorted(self.logs.glob("daemon-*.log"))

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files())

    def log_summary(self) -> str:
        """The warning and error events of every start, most frequent first."""
        counts = Counter(f"{event} ({level})" for level, event in LOG_LINE.findall(self.output()))
        return ", ".join(f"{name} x{n}" for name, n in counts.most_common(8))

    async def start(self, wait_ready: bool = True) -> None:
        """Start the daemon unless it runs (and wait for it to say it is ready); LabError
        after MAX_FAILED_STARTS starts in a row that died before being ready."""
        async with self._lock:
            if self.running():  # the watch restarted it already
                return
            for _ in range(MAX_FAILED_STARTS):
                self._spawn()
                if not wait_ready or await self._ready():
                    return
                if self.running():  # still waiting for a store that is down: not a death
                    self.say(f"  daemon not ready after {READY_TIMEOUT_SECONDS:g} s, running")
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
        if code == 0:  # Restart=on-failure: a clean exit is taken as meant
            why += "; systemd would not start it again, this harness does"
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
            self._daemon.process.kill()  # Popen's: never signals a pid it has reaped
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


# --- systemd -----------------------------------------------------------------------------

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
