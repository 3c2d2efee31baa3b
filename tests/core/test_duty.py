"""run_duty on the real Redis: its pace, an early wake, the singleton lock, an outage."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core.duty import Lock, run_duty
from hsid.core.keyspace import Keyspace
from tests.support import eventually


async def test_a_duty_runs_at_its_interval_or_when_its_step_asks_and_stops_promptly() -> None:
    stopping, runs = asyncio.Event(), []

    async def step() -> float | None:
        runs.append(time.monotonic())
        return 0.05 if len(runs) < 3 else None  # then the duty's own 60 s

    task = asyncio.create_task(run_duty("pace", step, 60.0, stopping))
    await eventually(lambda: len(runs) == 3, within=2.0, what="three quick runs")
    await asyncio.sleep(0.2)
    assert len(runs) == 3, "after the step stops asking, the interval holds"
    stopping.set()
    await asyncio.wait_for(task, 1.0)


async def test_a_wake_runs_a_sleeping_duty_at_once() -> None:
    stopping, wake, runs = asyncio.Event(), asyncio.Event(), []

    async def step() -> None:
        runs.append(time.monotonic())

    task = asyncio.create_task(run_duty("woken", step, 60.0, stopping, wake=wake))
    await eventually(lambda: len(runs) == 1, what="the first run")
    woken_at = time.monotonic()
    wake.set()
    await eventually(lambda: len(runs) == 2, within=1.0, what="the run the wake asked for")
    assert runs[1] - woken_at < 0.5
    stopping.set()
    await asyncio.wait_for(task, 1.0)


async def test_only_the_lock_holder_runs_a_singleton_duty_and_a_standby_takes_over(
    redis: aioredis.Redis, keyspace: Keyspace
) -> None:
    lock = Lock(redis, keyspace)
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    runs: dict[str, int] = {"first": 0, "second": 0}

    def counting(name: str):
        async def step() -> None:
            runs[name] += 1
        return step

    with capture_logs() as logs:
        first = asyncio.create_task(run_duty("single", counting("first"), 0.05, first_stop,
                                             lock=lock))
        await eventually(lambda: runs["first"] >= 1, what="the holder's first run")
        second = asyncio.create_task(run_duty("single", counting("second"), 0.05, second_stop,
                                              lock=lock, standby=0.05))
        await asyncio.sleep(0.3)
        assert runs["second"] == 0, "the standby never runs while the holder holds the lock"
        assert runs["first"] >= 3

        first_stop.set()  # the holder stops and lets the lock go
        await asyncio.wait_for(first, 2.0)
        await eventually(lambda: runs["second"] >= 1, within=2.0, what="the standby's take-over")
        second_stop.set()
        await asyncio.wait_for(second, 2.0)

    said = [e["event"] for e in logs if e["event"].startswith("single_")]
    assert said[:2] == ["single_active", "single_standby"] and "single_active" in said[2:]
    assert await redis.exists(keyspace.lock("single")) == 0, "the lock is let go at the end"


async def test_a_store_outage_is_said_once_and_its_end_once() -> None:
    stopping, calls = asyncio.Event(), []

    async def step() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise ConnectionError("connection refused")
        if len(calls) == 5:
            stopping.set()

    with capture_logs() as logs:
        await asyncio.wait_for(run_duty("flaky", step, 0.01, stopping), 2.0)

    said = [e["event"] for e in logs]
    assert said.count("flaky_store_unavailable") == 1
    assert said.count("flaky_store_available") == 1
    assert len(calls) == 5, "the duty carried on through the outage"
