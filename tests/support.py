"""Test support: the real daemon as a subprocess, and polling helpers."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a JSON document; (status, body) for error statuses too; (0, None) if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


async def eventually(probe: Callable[[], T | Awaitable[T | None] | None], within: float = 10.0,
                     what: str = "condition") -> T:
    """Call (and await, if need be) `probe()` until it returns something truthy; fail naming
    `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not met within {within} s"
        await asyncio.sleep(0.02)


class Daemon:
    """`python -m hsid <args>` with a controlled environment; output captured to a file."""

    def __init__(self, env: Mapping[str, str], args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HSID_")}
        for name in ("DATABASE_URL", "REDIS_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                     "JOURNAL_STREAM"):
            clean.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hsid", *args],
            env={**clean, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status (kills and fails on a hang)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            message = f"daemon did not exit within {timeout} s:\n{self.output()}"
            raise AssertionError(message) from None
        finally:
            self._log.close()
