"""The batch sweeper: closes batches whose window or idle time has passed, and re-batches
orphaned detections when Redis comes back empty (orphans.py)."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import structlog

from hsid.core import constants
from hsid.core.broker import state_lost
from hsid.core.context import StageContext
from hsid.core.duty import run_duty
from hsid.core.errors import STORE_ERRORS
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.orphans import rebatch_orphans

log = structlog.get_logger(__name__)


class BatchSweeper:
    """Stage: sweeps at least every `batch.sweep_interval_seconds` while a batch is open,
    until the daemon stops. With none open it sleeps until this process's batcher files a
    detection, or RECONCILE_CHECK_SECONDS at most (another process's batches, Redis's
    state), so an idle daemon is not woken every second.

    It also notices Redis coming back empty (its `reconciled:batches` marker gone, looked for
    at start and every RECONCILE_CHECK_SECONDS): the open batches and queued analysis jobs
    went with it, so the detections of the last `watcher.startup_lookback_hours` that belong
    to no event are batched again (orphans.py). Only the process that sets the marker again
    does it.
    """

    def __init__(self, context: StageContext, batcher: Batcher) -> None:
        config = context.config
        self._batcher = batcher
        self._config = config.batch
        self._interval = config.batch.sweep_interval_seconds
        self._stopping = context.stopping
        self._pool = context.pool
        self._redis = context.redis
        self._marker = context.keyspace.key(f"{constants.RECONCILED_PREFIX}batches")
        self._lookback = timedelta(hours=config.watcher.startup_lookback_hours)
        self._next_check = 0.0

    async def run(self) -> None:
        await run_duty("batch_sweep", self._sweep, self._interval, self._stopping,
                       wake=self._batcher.filed)

    async def _sweep(self) -> float:
        """One sweep (and the reconcile look when due); the seconds until the next."""
        if time.monotonic() >= self._next_check:
            await self._reconcile()
            self._next_check = time.monotonic() + constants.RECONCILE_CHECK_SECONDS
        await self._batcher.sweep()
        if self._batcher.open_batches:
            return self._interval
        return max(self._interval, self._next_check - time.monotonic())

    async def _reconcile(self) -> None:
        """Batch the orphans again if Redis lost its state; a failure hands the duty back."""
        if not await state_lost(self._redis, self._marker):
            return
        log.info("batch_state_missing", lookback_hours=self._lookback.total_seconds() / 3600)
        try:
            count = await rebatch_orphans(self._pool, self._batcher, self._config,
                                          datetime.now(UTC) - self._lookback)
        except STORE_ERRORS as err:  # PostgreSQL away: the next look tries again
            await self._give_back_marker()
            log.warning("orphans_not_rebatched", error=str(err) or type(err).__name__)
            return
        except BaseException:
            await self._give_back_marker()
            raise
        # Detections found here were stranded (Redis restarted empty, or a crash came before
        # batching them): worth a warning. A first start usually finds none.
        (log.warning if count else log.info)("batch_state_reconciled", rebatched=count)

    async def _give_back_marker(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):  # Redis away too: it comes back without it
            await self._redis.delete(self._marker)
