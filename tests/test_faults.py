"""Fault scenarios (the --short form of scripts/fault_report.py) and a kill -9 crash test.

Each test runs the real daemon with the tiny models on its own private PostgreSQL and
redis-server, started here from the machine's binaries on unix sockets: none of these tests
touches the shared stores of tests/conftest.py, and they run where those are absent. They
skip only where the server binaries are missing or, for the full disk, mounting a tmpfs is
not allowed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hsid.embedded import find_postgres_bin, find_redis_server
from tests.fault_lab import Models
from tests.faults import SCENARIOS, Outcome, Plan, Scenario, kill9, run_scenario

pytestmark = [
    pytest.mark.skipif(find_postgres_bin() is None,
                       reason="no PostgreSQL server binaries (initdb, pg_ctl, postgres)"),
    pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary"),
    pytest.mark.timeout(420),
]

SHORT = Plan(short=True)
CRASH_IMAGES = 200
CRASH_POINTS = ["detection", "batch", "analysis", "detection", "analysis"]


@pytest.fixture
def models(test_models: dict[str, Path]) -> Models:
    return Models(test_models["detector"], test_models["llm"])


def checked(outcome: Outcome) -> Outcome:
    """Skip for the reason the lab gave, else the outcome (with its figures)."""
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.figures is not None, outcome.explain() + "\n" + outcome.log_excerpt
    return outcome


def explained(outcome: Outcome) -> str:
    return f"{outcome.explain()}\ndaemon warnings and errors:\n{outcome.log_excerpt[-3000:]}"


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_daemon_comes_through_the_fault_losing_and_repeating_nothing(
    name: str, models: Models
) -> None:
    outcome = checked(await run_scenario(SCENARIOS[name], SHORT, models, print))
    figures = outcome.figures
    assert figures is not None
    why = explained(outcome)
    assert figures.sent > 0, why
    assert (figures.lost_images, figures.unanalysed) == (0, 0), why
    assert (figures.stored_twice, figures.in_several_events) == (0, 0), why
    assert outcome.exits == 0, why
    assert figures.dead_letters == 0, why  # an outage or a crash is no reason to give up a job
    assert outcome.failures == [], why  # the scenario's own expectation


async def test_kill9_at_detection_batch_and_analysis_loses_nothing_and_analyses_once(
    models: Models,
) -> None:
    crash = Scenario(
        "kill9_crash", lambda p: f"kill -9 x{len(CRASH_POINTS)}, {CRASH_IMAGES} images",
        lambda lab, plan, out: kill9(lab, plan, out, CRASH_POINTS, CRASH_IMAGES))
    outcome = checked(await run_scenario(crash, Plan(short=True, rate=6.0), models, print))
    figures = outcome.figures
    assert figures is not None
    why = explained(outcome)
    assert figures.sent == CRASH_IMAGES, why
    assert figures.stored == CRASH_IMAGES, why  # nothing lost
    assert figures.stored_twice == 0, why
    # Every detection in exactly one event.
    assert (figures.unanalysed, figures.in_several_events) == (0, 0), why
    assert outcome.exits == 0 and figures.dead_letters == 0, why
