"""Store outages: telling an outage from a fault, and waiting one out, said once each way.

A store that is down is not a crash: a stage or a job that failed because PostgreSQL or
Redis went away waits for it (backoff, no limit) and resumes, spending none of its crash
budget or attempts. Only the first waiter logs `store_outage`, and only the first to see
the store back logs `store_recovered`, however many stages and jobs were waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from hsid.core.backoff import Backoff
from hsid.core.errors import STORE_ERRORS, Unavailable
from hsid.core.health import probe_database, probe_redis

log = structlog.get_logger(__name__)

# Errors that mean "the connection to a store is gone", whatever the probes say a moment
# later: a PostgreSQL restart answers AdminShutdown (57P01) or CannotConnectNow (57P03)
# and may be back before we probe; such a failure is never counted against the job.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "connection was closed"
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis loading its data)
    redis.exceptions.TimeoutError,
)
# Waiting for a store: probes start this often and slow down to at most every
# OUTAGE_PROBE_MAX_SECONDS, so work resumes within seconds of the store's return.
OUTAGE_PROBE_INITIAL_SECONDS = 0.5
OUTAGE_PROBE_MAX_SECONDS = 5.0


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err`, what it was raised from (`__cause__`, else `__context__`) and, for an
    exception group (a TaskGroup's crash), each member's chain; each error once."""
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending:
        current: BaseException | None = pending.pop()
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            yield current
            if isinstance(current, BaseExceptionGroup):
                pending.extend(current.exceptions)
            current = current.__cause__ or current.__context__


def caused_by(err: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(cause, kinds) for cause in causes(err))


class StoreWatch:
    """Probes this process's PostgreSQL pool and Redis client; one per process, shared."""

    def __init__(self, pool: asyncpg.Pool, client: aioredis.Redis) -> None:
        self._pool, self._client = pool, client
        self._outages: dict[str, float] = {}  # store -> when its outage was first seen

    async def down(self) -> dict[str, str]:
        """The stores that do not answer now, with each one's error; {} when both are up."""
        database, broker = await asyncio.gather(probe_database(self._pool),
                                                probe_redis(self._client))
        return {name: str(report.get("error")) for name, report in
                (("database", database), ("redis", broker)) if report["status"] != "up"}

    async def is_outage(self, err: BaseException) -> bool:
        """True when `err` came from a store being unreachable rather than from a fault.

        A connection error always is; any other store error (or Unavailable) is when a
        probe finds a store down right now. Anything else is a fault.
        """
        if caused_by(err, CONNECTION_ERRORS):
            return True
        return caused_by(err, (*STORE_ERRORS, Unavailable)) and bool(await self.down())

    async def wait_until_up(self) -> None:
        """Return once both stores answer, probing with backoff; never gives up (cancel it)."""
        backoff = Backoff(OUTAGE_PROBE_INITIAL_SECONDS, OUTAGE_PROBE_MAX_SECONDS)
        while down := await self.down():
            now = time.monotonic()
            for store, error in down.items():
                if store not in self._outages:
                    self._outages[store] = now
                    log.warning("store_outage", store=store, error=error)
            await asyncio.sleep(backoff.next_delay())
        for store, since in list(self._outages.items()):
            del self._outages[store]
            log.info("store_recovered", store=store,
                     outage_s=round(time.monotonic() - since, 1))
