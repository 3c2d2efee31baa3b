"""Supervision: a crashed stage is logged, restarted with backoff, and given up on eventually."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from hsid.core import constants
from hsid.core.config import Config
from hsid.core.health import StageState
from hsid.core.runtime import Runtime
from hsid.daemon.app import run_stages, supervise
from tests.support import eventually


class FlakyStage:
    """Crashes `crashes` times in all, then runs until the daemon stops."""

    def __init__(self, runtime: Runtime, crashes: int, starts: list[float]) -> None:
        self._runtime, self._crashes, self._starts = runtime, crashes, starts

    async def run(self) -> None:
        self._starts.append(asyncio.get_running_loop().time())
        if len(self._starts) <= self._crashes:
            raise RuntimeError(f"crash {len(self._starts)}")
        await self._runtime.stopping.wait()


async def _at_least(items: list[float], count: int) -> bool:
    return len(items) >= count


@pytest.fixture
def fast_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "RESTART_BACKOFF_INITIAL_SECONDS", 0.05)
    monkeypatch.setattr(constants, "RESTART_MAX_CRASHES", 4)


async def test_crashed_stage_is_restarted_with_growing_backoff(fast_restarts: None) -> None:
    runtime = Runtime(config=Config(), stages=frozenset())
    starts: list[float] = []
    with capture_logs() as logs:
        task = asyncio.create_task(
            supervise("flaky", lambda: FlakyStage(runtime, 2, starts), runtime))
        await eventually(lambda: _at_least(starts, 3), within=5)
        status = runtime.health.stages["flaky"]
        assert status.state is StageState.RUNNING
        assert status.restarts == 2
        assert status.last_error == "RuntimeError: crash 2"
        runtime.stopping.set()
        await asyncio.wait_for(task, 2)
    assert runtime.health.stages["flaky"].state is StageState.STOPPED
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert first_gap >= 0.05 and second_gap >= 0.1  # doubling
    assert [e["event"] for e in logs if e["event"].startswith("stage_")].count(
        "stage_crashed") == 2


async def test_stage_that_keeps_crashing_is_given_up_and_health_says_so(
    fast_restarts: None,
) -> None:
    runtime = Runtime(config=Config(), stages=frozenset())
    starts: list[float] = []
    with capture_logs() as logs:
        await asyncio.wait_for(
            supervise("broken", lambda: FlakyStage(runtime, 99, starts), runtime), 10)
    assert len(starts) == 4
    assert runtime.health.stages["broken"].state is StageState.FAILED
    assert not runtime.health.stages_ok()
    assert any(e["event"] == "stage_given_up" and e["log_level"] == "error" for e in logs)
    # Giving up is the daemon's decision to exit non-zero, never a clean stop.
    assert runtime.given_up.is_set() and not runtime.stopping.is_set()
    assert runtime.failure == "stage broken crashed 4 times: RuntimeError: crash 4"


async def test_a_stage_given_up_ends_the_others_and_the_daemon_fails(
    fast_restarts: None,
) -> None:
    runtime = Runtime(config=Config(), stages=frozenset())
    healthy: list[float] = []
    selected = [("broken", lambda: FlakyStage(runtime, 99, [])),
                ("healthy", lambda: FlakyStage(runtime, 0, healthy))]

    await asyncio.wait_for(run_stages(runtime, selected), 10)

    assert len(healthy) == 1  # it was running, and was cancelled, not restarted
    assert runtime.failure is not None and not runtime.stopping.is_set()
