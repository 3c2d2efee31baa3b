"""Fault scenarios for hsid: what each does to the running daemon under a stream of uploads,
what it must come through, and the table row it yields.

The one place for the scenario logic: scripts/fault_report.py prints the table,
tests/test_faults.py asserts each row (the --short form). Every row must read 0 lost,
0 duplicates, 0 dead letters and 0 unexpected daemon exits, plus the scenario's own
expectation (noted in `Outcome.failures` when it is not met).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.fault_daemon import LabError, Say, stop_timeout_seconds
from tests.fault_lab import Lab, Models, Skipped
from tests.fault_stores import Figures

KILL_POINTS = ("detection", "batch", "analysis")
# How long a kill waits for its point (an image in detection, an open batch, an analysis in
# flight) before killing anyway and saying so.
POINT_WAIT_SECONDS = 20.0
POISON_TRIES = 4  # jobs tried before the poison scenario gives up catching one twice
EVENT_WAIT_SECONDS = 60.0
RULES_MARK = "LLM was not used"  # in every rule-scored event's reasoning (analysis/fallback.py)
DISK_MB = 24  # the state dir's tmpfs: room for a few thousand thumbnails
HEADER = ("scenario", "images sent", "stored", "events", "duplicates", "lost", "dead letters",
          "daemon exits")


@dataclass(frozen=True, slots=True)
class Plan:
    """Timings and sizes: the full run, or `short` (CI) with 10 s outages and fewer kills.
    `images` fixes every scenario's upload count; by default it follows from the timings
    (`rate` uploads a second from before the fault until after it)."""

    short: bool = False
    rate: float = 3.0
    images: int | None = None
    seed: int | None = None

    @property
    def outage(self) -> float:
        return 10.0 if self.short else 30.0

    @property
    def long_outage(self) -> float:
        # Past the stage supervisor's restart backoff ramp (1+2+4+8+16 s) even when short.
        return 45.0 if self.short else 300.0

    @property
    def lead(self) -> float:
        return 4.0 if self.short else 10.0

    @property
    def kills(self) -> int:
        return 3 if self.short else 5

    @property
    def kill_gap(self) -> tuple[float, float]:
        return (1.0, 3.0) if self.short else (2.0, 6.0)

    def count(self, busy_seconds: float) -> int:
        """Uploads for a scenario whose fault lasts `busy_seconds`."""
        return self.images or max(10, round(self.rate * (2 * self.lead + busy_seconds)))

    def drain_timeout(self, sent: int) -> float:
        return 120.0 + 0.2 * sent


@dataclass
class Outcome:
    """One scenario's row, with what explains it."""

    name: str
    label: str
    figures: Figures | None = None
    exits: int = 0
    failures: list[str] = field(default_factory=list)  # expectations not met, besides counts
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    log_summary: str = ""
    log_excerpt: str = ""

    @property
    def problems(self) -> list[str]:
        """Why the row is not clean; empty when it is (or was skipped)."""
        if self.skipped:
            return []
        f = self.figures
        if f is None:
            return [*self.failures, "no figures"]
        counted = [(f.lost_images, "images never stored"), (f.unanalysed, "detections in no event"),
                   (f.stored_twice, "images stored twice"),
                   (f.in_several_events, "detections in more than one event"),
                   (f.dead_letters, "dead letters"), (self.exits, "unexpected daemon exits")]
        return [f"{n} {what}" for n, what in counted if n] + self.failures

    @property
    def clean(self) -> bool:
        return not self.problems

    def cells(self) -> list[str]:
        label = self.label if self.clean else f"{self.label} ✗"
        f = self.figures
        if self.skipped or f is None:
            return [label, *(["skipped" if self.skipped else "error"] * (len(HEADER) - 2)),
                    str(self.exits)]
        lost = str(f.lost) if not f.unanalysed else (
            f"{f.lost} ({f.lost_images} images + {f.unanalysed} unanalysed)")
        dups = str(f.duplicates) if not f.in_several_events else (
            f"{f.duplicates} ({f.stored_twice} images + {f.in_several_events} in 2+ events)")
        return [label, str(f.sent), str(f.stored), str(f.events), dups, lost,
                str(f.dead_letters), str(self.exits)]

    def explain(self) -> str:
        """The problems, notes and the daemon's warnings, for a report or an assertion."""
        lines = [f"{self.name}: " + ("skipped: " + self.skipped if self.skipped else
                                    "clean" if self.clean else "; ".join(self.problems))]
        lines += [f"  - {note}" for note in self.notes]
        if self.log_summary:
            lines.append(f"  - daemon warnings/errors: {self.log_summary}")
        return "\n".join(lines)


def markdown(outcomes: Iterable[Outcome]) -> str:
    rows = [HEADER, tuple("---" for _ in HEADER), *(tuple(o.cells()) for o in outcomes)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


# --- Scenarios ---------------------------------------------------------------------------------

async def postgres_down(lab: Lab, plan: Plan, out: Outcome, seconds: float) -> None:
    """PostgreSQL stopped under load (connections cut) and started again `seconds` later."""
    uploading = lab.upload(plan.count(seconds), plan.rate)
    await asyncio.sleep(plan.lead)
    lab.say(f"  {lab.elapsed():6.1f}s stopping PostgreSQL for {_duration(seconds)}")
    await lab.stores.pg.stop()
    await asyncio.sleep(seconds)
    await lab.stores.pg.start()
    lab.say(f"  {lab.elapsed():6.1f}s PostgreSQL is back")
    await uploading


async def redis_down(lab: Lab, plan: Plan, out: Outcome) -> None:
    """redis-server stopped under load and started again empty, as one that keeps nothing
    on disk would be: queues, batches, dedupe claims and dead letters all gone."""
    uploading = lab.upload(plan.count(plan.outage), plan.rate)
    await asyncio.sleep(plan.lead)
    lab.say(f"  {lab.elapsed():6.1f}s stopping Redis for {_duration(plan.outage)}")
    await lab.stores.restart_redis_empty(plan.outage)
    lab.say(f"  {lab.elapsed():6.1f}s Redis is back, empty")
    await uploading


def _fill(path: Path) -> int:
    """Blocking: grow `path` until the file system has no byte left; bytes added.

    Unbuffered, so that nothing is left half-written for a close to fail on."""
    added = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = bytes(chunk)
            while True:
                try:
                    written = os.write(fd, block)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
                added += written
                if written < chunk:
                    break
    finally:
        os.close(fd)
    return added


async def disk_full(lab: Lab, plan: Plan, out: Outcome) -> None:
    """The state dir (thumbnails) on a tiny tmpfs that fills up under load: kept full for
    the outage (whatever the daemon frees is taken again), then the space comes back."""
    uploading = lab.upload(plan.count(plan.outage), plan.rate)
    await asyncio.sleep(plan.lead)
    filler = lab.state_dir / "filler"
    lab.say(f"  {lab.elapsed():6.1f}s filling the state dir for {_duration(plan.outage)}")
    deadline = asyncio.get_running_loop().time() + plan.outage
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.to_thread(_fill, filler)
        await asyncio.sleep(0.5)
    filler.unlink()
    lab.say(f"  {lab.elapsed():6.1f}s space is back")
    await uploading


async def kill9(lab: Lab, plan: Plan, out: Outcome, points: list[str] | None = None,
                images: int | None = None) -> None:
    """kill -9 of the daemon at random moments while an image is in detection, a batch is
    open, or an analysis is in flight; each time started again at once. No two kills catch
    the same job in flight: that would make it a poison job on purpose."""
    points = points or [KILL_POINTS[i % len(KILL_POINTS)] for i in range(plan.kills)]
    rng = random.Random(plan.seed)
    gap = sum(plan.kill_gap) / 2 + 3  # a restart takes a few seconds
    uploading = lab.upload(images or plan.count(len(points) * gap), plan.rate)
    await asyncio.sleep(plan.lead)
    caught: set[str] = set()
    assert lab.daemon is not None
    for number, point in enumerate(points, 1):
        await asyncio.sleep(rng.uniform(*plan.kill_gap))
        point_ids, jobs = await lab.wait_for_point(point, caught, POINT_WAIT_SECONDS)
        await lab.daemon.kill9()
        caught |= jobs
        if not point_ids:
            verdict = f"no {point} in flight within {POINT_WAIT_SECONDS:g} s, killed anyway"
        elif point != "batch" and not point_ids & await lab.stores.in_flight(point):
            verdict = "its job finished just before the kill"
        else:
            verdict = f"{len(point_ids)} in flight" if point != "batch" else "a batch open"
        out.notes.append(f"kill -9 #{number} at {point}: {verdict}")
        lab.say(f"  {lab.elapsed():6.1f}s kill -9 #{number} at {point}: {verdict}")
        await lab.daemon.start()
    await uploading


async def sigterm(lab: Lab, plan: Plan, out: Outcome) -> None:
    """SIGTERM while jobs are in flight: exit 0 within the unit's TimeoutStopSec, in-flight
    jobs back on their queues (none left in processing lists); then started again."""
    limit = stop_timeout_seconds()
    uploading = lab.upload(plan.count(10.0), plan.rate)
    await asyncio.sleep(plan.lead)
    assert lab.daemon is not None
    _, jobs = await lab.wait_for_point("job", set(), POINT_WAIT_SECONDS)
    code, seconds = await lab.daemon.terminate(limit)
    left = await lab.stores.in_flight_jobs()
    lab.say(f"  {lab.elapsed():6.1f}s SIGTERM with {len(jobs)} jobs in flight: status {code} "
            f"after {seconds:.1f} s, {len(left)} left in processing lists")
    out.notes.append(f"SIGTERM with {len(jobs)} jobs in flight: exit status {code} after "
                     f"{seconds:.1f} s (TimeoutStopSec {limit:g} s)")
    if code is None:
        lab.daemon.unexpected.append(f"SIGTERM: still running after TimeoutStopSec "
                                     f"({limit:g} s), killed as systemd would")
    elif code != 0:
        lab.daemon.unexpected.append(f"SIGTERM: exit status {code}")
    if left:
        out.failures.append(f"{len(left)} in-flight jobs left in processing lists after the "
                            "exit, not back on their queues")
    await asyncio.sleep(2.0)  # uploads go on while it is down: the start-up scan finds them
    await lab.daemon.start()
    await uploading


async def poison_analysis(lab: Lab, plan: Plan, out: Outcome) -> None:
    """kill -9 twice while the same analysis job is in flight, then let the daemon start:
    that batch must still become an event, scored by the rules, its reasoning saying why."""
    uploading = lab.upload(plan.count(20.0), plan.rate)
    await asyncio.sleep(plan.lead)
    assert lab.daemon is not None
    tried: set[str] = set()
    poisoned = None
    for _ in range(POISON_TRIES):
        point_ids, _ = await lab.wait_for_point("analysis", tried, POINT_WAIT_SECONDS)
        if not point_ids:
            break
        tried |= point_ids
        if await _kill_twice_on(lab, batch_id := min(point_ids)):
            poisoned = batch_id
            break
    if poisoned is None:
        out.failures.append(f"harness: could not kill twice with one analysis job in flight "
                            f"({len(tried)} jobs tried)")
    else:
        await _check_rule_scored(lab, out, poisoned)
    await uploading


async def _kill_twice_on(lab: Lab, batch_id: str) -> bool:
    """Kill now with `batch_id` in flight, start, kill again as soon as the new process has
    taken it again, start; False (daemon running) when it finished before either kill."""
    assert lab.daemon is not None
    await lab.daemon.kill9()
    if not await _still_in_flight(lab, batch_id, 1):
        await lab.daemon.start()
        return False
    async with lab.stores.takes("analysis") as takes:
        # Not waiting for health: the recovered job is taken first, within milliseconds.
        await lab.daemon.start(wait_ready=False)
        deadline = asyncio.get_running_loop().time() + POINT_WAIT_SECONDS
        while await takes.next_take(deadline - asyncio.get_running_loop().time()):
            if batch_id in await lab.stores.in_flight("analysis"):
                await lab.daemon.kill9()
                break
        else:
            lab.say(f"  {lab.elapsed():6.1f}s job {batch_id[:8]} not taken again")
            return False
    if not await _still_in_flight(lab, batch_id, 2):
        await lab.daemon.start()
        return False
    await lab.daemon.start()
    return True


async def _still_in_flight(lab: Lab, batch_id: str, number: int) -> bool:
    hit = batch_id in await lab.stores.in_flight("analysis")
    lab.say(f"  {lab.elapsed():6.1f}s kill -9 #{number} with analysis job {batch_id[:8]} "
            + ("in flight" if hit else "already finished"))
    return hit


async def _check_rule_scored(lab: Lab, out: Outcome, batch_id: str) -> None:
    reasoning = None
    deadline = asyncio.get_running_loop().time() + EVENT_WAIT_SECONDS
    while reasoning is None and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(lab.stores.dsn, timeout=5)
            try:
                reasoning = await conn.fetchval(
                    "SELECT reasoning FROM events WHERE batch_id = $1", batch_id)
            finally:
                await conn.close()
        await asyncio.sleep(0.5)
    if reasoning is None:
        out.failures.append(f"batch {batch_id} killed the daemon twice and became no event "
                            f"within {EVENT_WAIT_SECONDS:g} s")
        return
    out.notes.append(f"batch {batch_id[:8]} (in flight at both kills) became an event; "
                     f"reasoning: {reasoning[:160]!r}")
    if RULES_MARK not in reasoning:
        out.failures.append(f"batch {batch_id[:8]} was in flight at two crashes but was scored "
                            "by the LLM again, not by the rules")


# --- Registry and runner ----------------------------------------------------------------------

ScenarioRun = Callable[[Lab, Plan, Outcome], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: Callable[[Plan], str]
    run: ScenarioRun
    disk_mb: int | None = None  # the state dir on a tmpfs of this size


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("postgres_down", lambda p: f"PostgreSQL down {_duration(p.outage)}",
             lambda lab, p, o: postgres_down(lab, p, o, p.outage)),
    Scenario("postgres_down_long", lambda p: f"PostgreSQL down {_duration(p.long_outage)}",
             lambda lab, p, o: postgres_down(lab, p, o, p.long_outage)),
    Scenario("redis_down_empty",
             lambda p: f"Redis down {_duration(p.outage)}, restarted empty", redis_down),
    Scenario("disk_full", lambda p: f"state dir disk full {_duration(p.outage)}", disk_full,
             disk_mb=DISK_MB),
    Scenario("kill9", lambda p: f"kill -9 x{p.kills} under load", kill9),
    Scenario("sigterm", lambda p: "SIGTERM under load", sigterm),
    Scenario("poison_analysis", lambda p: "poison analysis job (2 kills)", poison_analysis),
)}

_LOG_PROBLEM = re.compile(r"\[(warning|error|critical)|Traceback|Error:")


async def run_scenario(scenario: Scenario, plan: Plan, models: Models, say: Say,
                       keep_failed: bool = False) -> Outcome:
    """Run one scenario in a lab of its own, drain the pipeline, and measure its row."""
    out = Outcome(scenario.name, scenario.label(plan))
    say(f"== {scenario.name}: {out.label}")
    lab = Lab(models, say, scenario.disk_mb)
    try:
        async with lab:
            reporter = asyncio.create_task(lab.report())
            try:
                await scenario.run(lab, plan, out)
                say(f"  {lab.elapsed():6.1f}s uploads done ({len(lab.sent)}); draining")
                drained = await lab.drain(lab.sent, plan.drain_timeout(len(lab.sent)))
                out.notes.append(f"drain: {drained}")
                out.figures = await lab.stores.figures(lab.sent)
            finally:
                reporter.cancel()
                _read_logs(lab, out)  # before the lab removes them
            lab.keep = keep_failed and not out.clean
    except Skipped as err:
        out.skipped = str(err)
    except LabError as err:
        out.failures.append(f"harness: {err}")
    except Exception as err:  # a harness fault must still leave a row, and say where it was
        out.failures.append(f"harness error: {type(err).__name__}: {err}")
        say(traceback.format_exc())
    if lab.daemon is not None:  # counted after the lab's last stop, which may fail too
        out.exits = len(lab.daemon.unexpected)
        out.notes += [f"unexpected exit: {why}" for why in lab.daemon.unexpected]
        if lab.daemon.broken:
            out.failures.append(f"daemon could not be restarted: {lab.daemon.broken}")
    say(out.explain())
    return out


def _read_logs(lab: Lab, out: Outcome) -> None:
    if lab.daemon is not None:
        out.log_summary = lab.daemon.log_summary()
        out.log_excerpt = "\n".join(line for line in lab.daemon.output().splitlines()
                                    if _LOG_PROBLEM.search(line))[-6000:]
