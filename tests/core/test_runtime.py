"""hsid/core/runtime.py: the stop-aware pause every stage loop sleeps in."""

from __future__ import annotations

import asyncio

import pytest

from hsid.core.runtime import pause


async def test_pause_wakes_at_once_on_stop_and_otherwise_times_out() -> None:
    stopping = asyncio.Event()
    assert await pause(stopping, 0.01) is False
    stopping.set()
    assert await asyncio.wait_for(pause(stopping, 3600), 1) is True


async def test_a_cancellation_a_library_swallowed_is_honoured_at_the_next_pause() -> None:
    # redis-py 8.1 now and then returns normally from a command whose task was cancelled;
    # a watcher loop then outlived its TaskGroup's abort and was never restarted.
    stopping, swallowed = asyncio.Event(), asyncio.Event()

    async def library_call() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # what the library does: the cancel is lost

    async def stage_loop() -> None:
        while not await pause(stopping, 0.01):
            await library_call()

    task = asyncio.create_task(stage_loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert swallowed.is_set()
