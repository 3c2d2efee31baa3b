"""Exponential backoff, and waiting for a store that is not up yet."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from hsid.core.errors import Unavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Backoff:
    """Delays that double from `initial` up to `maximum`; `reset()` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial, self._maximum = initial, maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        self._next = self._initial


async def retry_until_available(
    what: str, connect: Callable[[], Awaitable[T]], max_delay: float = 30.0
) -> T:
    """Call `connect` until it stops raising Unavailable, logging each failure.

    Never gives up: a home server often starts hsid before PostgreSQL or Redis is ready,
    and systemd (or SIGTERM), not this loop, decides when waiting has become a failure.
    """
    backoff, attempt = Backoff(0.5, max_delay), 1
    while True:
        try:
            result = await connect()
        except Unavailable as err:
            delay = backoff.next_delay()
            log.warning("store_unavailable", store=what, attempt=attempt, retry_in_s=delay,
                        error=str(err))
            await asyncio.sleep(delay)
            attempt += 1
            continue
        log.info("store_connected", store=what, attempt=attempt)
        return result
