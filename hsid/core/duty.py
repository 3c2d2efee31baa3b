"""Periodic duties: the one loop behind everything hsid does every so often.

A duty is a step run again and again until the daemon stops: the batch sweeper, the alert
delivery, baselines, cleanup, the GPU monitor, the status publisher, the camera status rules.
`run_duty` gives each the same four things, so no duty writes them again:

- the interval, or the step's own answer to "when next?" (a step returns the seconds until
  it wants to run again, or None for the duty's interval);
- a sleep that wakes at once on shutdown, and early when the duty's `wake` event is set (a
  duty that can be told there is work sleeps long and wakes on the news, not on a short poll);
- an optional singleton lock (`lock:<name>`, core/locks.py), so one process of a scaled-out
  install does the duty and the others stand by;
- a store outage said once: one warning when the stores stop answering, one info line when
  the step succeeds again (`<name>_store_unavailable` / `<name>_store_available`), and the
  duty carries on at its interval meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from hsid.core.errors import STORE_ERRORS
from hsid.core.keyspace import Keyspace
from hsid.core.locks import singleton_lock
from hsid.core.runtime import pause

log = structlog.get_logger(__name__)

# A singleton duty's holder lets its lock go after this long and asks again (see run_duty).
LEASE_SECONDS = 60.0

Step = Callable[[], Awaitable[float | None]]


@dataclass(frozen=True, slots=True)
class Lock:
    """Where a singleton duty's lock lives: the Redis client and the install's key names."""

    redis: aioredis.Redis
    keyspace: Keyspace


@dataclass(slots=True)
class OutageNotice:
    """One warning per store outage and one line when it is over, not one per attempt."""

    name: str
    failing: bool = False

    def failed(self, err: BaseException) -> None:
        if not self.failing:
            log.warning(f"{self.name}_store_unavailable", error=str(err) or type(err).__name__)
        self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            log.info(f"{self.name}_store_available")
        self.failing = False


async def run_duty(name: str, step: Step, every: float, stopping: asyncio.Event, *,
                   lock: Lock | None = None, wake: asyncio.Event | None = None,
                   standby: float | None = None) -> None:
    """Run `step` every `every` seconds (or when it asks, or when `wake` is set) until
    `stopping` is set.

    With `lock`, only while this process holds `lock:<name>`: it is held for up to
    LEASE_SECONDS of runs, then let go and asked for again, so a process that lost it in a
    Redis outage (and another took over) stops within a lease; a process without it asks
    again every `standby` seconds (default `every`) and says `<name>_active` or
    `<name>_standby` when that changes. Store errors are an outage (said once); any other
    error propagates to supervision."""
    outage = OutageNotice(name)
    if lock is None:
        await _steps(step, every, stopping, wake, outage, until=None)
        return
    holding: bool | None = None
    while not stopping.is_set():
        try:
            async with singleton_lock(lock.redis, lock.keyspace, name) as held:
                if held != holding:
                    log.info(f"{name}_active" if held else f"{name}_standby")
                holding = held
                if held:
                    await _steps(step, every, stopping, wake, outage,
                                 until=time.monotonic() + LEASE_SECONDS)
                    continue
        except STORE_ERRORS as err:
            outage.failed(err)
        if await pause(stopping, every if standby is None else standby):
            return


async def _steps(step: Step, every: float, stopping: asyncio.Event, wake: asyncio.Event | None,
                 outage: OutageNotice, until: float | None) -> None:
    """Run `step` at its pace until stopping, or until the monotonic time `until`."""
    while until is None or time.monotonic() < until:
        delay: float | None = None
        try:
            delay = await step()
        except STORE_ERRORS as err:
            outage.failed(err)
        else:
            outage.succeeded()
        if await pause(stopping, every if delay is None else delay, wake):
            return
