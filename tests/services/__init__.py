"""Tests of hsid.services, and the one polling wait they share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    """Wait until `check()` is true; fail the test naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
