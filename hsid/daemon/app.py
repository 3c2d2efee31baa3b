"""The daemon: connects the stores, runs the selected stages supervised, and shuts down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import structlog

from hsid.core import constants
from hsid.core.backoff import Backoff, retry_until_available
from hsid.core.broker import connect_redis
from hsid.core.config import Config, SystemdEnvironment
from hsid.core.db import apply_schema, create_pool
from hsid.core.health import Health, StageState
from hsid.core.outage import StoreWatch
from hsid.core.runtime import Runtime
from hsid.core.systemd import SystemdNotifier
from hsid.daemon.stages import StageFactory, Stages, build_stages
from hsid.embedded import start_embedded_stores
from hsid.upkeep import dblog

log = structlog.get_logger(__name__)

# How long in-flight jobs get to finish after SIGTERM before they are cancelled (their
# queue items stay in the processing list and are recovered at the next start).
SHUTDOWN_GRACE_SECONDS = 10.0


async def supervise(name: str, factory: StageFactory, runtime: Runtime) -> None:
    """Run one stage; on a crash log it, mark health, and restart with backoff.

    A crash because a store is down is not a fault: the stage waits for the store (state
    `waiting`, health 503) and starts again, with no crash counted. Like Frigate's watchdog
    it gives up after RESTART_MAX_CRASHES real crashes within RESTART_WINDOW_SECONDS; unlike
    it, giving up ends the daemon with a non-zero status, so that systemd restarts it rather
    than leaving a process that runs but no longer watches.
    """
    health = runtime.health
    backoff = Backoff(constants.RESTART_BACKOFF_INITIAL_SECONDS,
                      constants.RESTART_BACKOFF_MAX_SECONDS)
    crashes: deque[float] = deque()
    while not runtime.stopping.is_set():
        health.set_stage(name, StageState.RUNNING)
        started = time.monotonic()
        try:
            await factory().run()
            error = "returned while the daemon was running"
        except Exception as err:
            if runtime.stopping.is_set():
                break
            error = f"{type(err).__name__}: {err}"
            if runtime.stores is not None and await runtime.stores.is_outage(err):
                health.set_stage(name, StageState.WAITING, error)
                log.info("stage_waiting_for_store", stage=name, error=error)
                await runtime.stores.wait_until_up()
                await asyncio.sleep(constants.RESTART_BACKOFF_INITIAL_SECONDS)
                continue
            log.exception("stage_crashed", stage=name)
        if runtime.stopping.is_set():
            break
        now = time.monotonic()
        if now - started > constants.RESTART_WINDOW_SECONDS:
            backoff.reset()
        crashes.append(now)
        while crashes and now - crashes[0] > constants.RESTART_WINDOW_SECONDS:
            crashes.popleft()
        if len(crashes) >= constants.RESTART_MAX_CRASHES:
            health.set_stage(name, StageState.FAILED, error)
            log.error("stage_given_up", stage=name, crashes=len(crashes), error=error)
            runtime.give_up(f"stage {name} crashed {len(crashes)} times: {error}")
            return
        delay = backoff.next_delay()
        health.set_stage(name, StageState.RESTARTING, error)
        log.warning("stage_restarting", stage=name, in_s=delay, error=error)
        await asyncio.sleep(delay)
    health.set_stage(name, StageState.STOPPED)


async def _until_stopping(runtime: Runtime, awaitable: asyncio.Future | asyncio.Task) -> bool:
    """Wait for `awaitable` unless a stop is requested first; True when it finished."""
    stop = asyncio.ensure_future(runtime.stopping.wait())
    done, _ = await asyncio.wait({awaitable, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if awaitable not in done:
        awaitable.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await awaitable
        return False
    return True


async def connect_stores(runtime: Runtime, stack: AsyncExitStack) -> bool:
    """Connect PostgreSQL and Redis (waiting as long as needed) and apply the schema."""
    config = runtime.config

    async def database() -> None:
        pool = await retry_until_available("database", lambda: create_pool(config.database))
        stack.push_async_callback(pool.close)
        await apply_schema(pool)
        runtime.pool = pool  # only now: the API and health must never see a schema-less pool

    async def broker() -> None:
        runtime.redis = await retry_until_available("redis", lambda: connect_redis(config.redis))
        stack.push_async_callback(runtime.redis.aclose)

    both = asyncio.ensure_future(asyncio.gather(database(), broker()))
    if not await _until_stopping(runtime, both):
        return False
    runtime.stores = StoreWatch(runtime.require_pool(), runtime.require_redis())
    return True


async def run_stages(runtime: Runtime, selected: Stages) -> None:
    """All selected stages in one TaskGroup until SIGTERM, or until one is given up; then a
    bounded drain (after giving up, none: the other stages are cancelled at once)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(supervise(n, f, runtime), name=n) for n, f in selected]
        stop = asyncio.ensure_future(runtime.stopping.wait())
        failed = asyncio.ensure_future(runtime.given_up.wait())
        await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        failed.cancel()
        if not tasks:
            return
        if runtime.given_up.is_set():
            pending = set(tasks)
        else:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        log.info("stages_drained", finished=len(tasks) - len(pending), cancelled=len(pending))


def _write_logs_to_database(runtime: Runtime) -> Callable[[], Awaitable[None]]:
    """Start copying log records into the logs table; returns the stop that writes the rest."""
    handler = dblog.install(runtime.config.logging)
    flusher = asyncio.create_task(handler.flush_loop(lambda: runtime.pool))

    async def stop() -> None:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        dblog.uninstall()

    return stop


def install_signal_handlers(runtime: Runtime) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, runtime, signum)


def _request_stop(runtime: Runtime, signum: int) -> None:
    if not runtime.stopping.is_set():
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
    runtime.stopping.set()


async def run_daemon(
    config: Config, stages: frozenset[str], systemd: SystemdEnvironment | None = None
) -> int:
    """The whole life of `hsid run`; returns the exit status."""
    systemd = systemd or SystemdEnvironment()
    runtime = Runtime(config=config, stages=stages, health=Health())
    notifier = SystemdNotifier(systemd.notify_socket)
    install_signal_handlers(runtime)
    log.info("hsid_starting", stages=sorted(stages))
    # Unwinds in this order: stages drained, API closed, log buffer written, stores closed.
    async with AsyncExitStack() as stores, AsyncExitStack() as front:
        front.push_async_callback(_write_logs_to_database(runtime))
        if systemd.watchdog_usec:
            pinger = asyncio.create_task(notifier.watchdog(systemd.watchdog_usec))
            front.callback(pinger.cancel)
        if "api" in stages:
            from hsid.api.server import start_api

            runner = await start_api(runtime)
            front.push_async_callback(runner.cleanup)
        runtime.config = await start_embedded_stores(runtime.config, stores)
        if await connect_stores(runtime, stores):
            selected = await build_stages(runtime)
            notifier.notify("READY=1")
            log.info("hsid_ready", stages=[name for name, _ in selected])
            await run_stages(runtime, selected)
        notifier.notify("STOPPING=1")
        log.info("hsid_stopping")
    if runtime.failure is not None:
        log.error("hsid_gave_up", reason=runtime.failure)
        return 1
    log.info("hsid_stopped")
    return 0
