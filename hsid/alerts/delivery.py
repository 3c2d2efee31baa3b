"""Alert notifier: delivers pending alerts to their channels (log, webhook, MQTT, Apprise),
with retries.

Delivery state lives in alerts.metadata, as the data model has no columns for it: "delivery"
holds one entry per channel; "delivery_final" and "next_attempt_at" sit at the top level so the
due-alert query filters in SQL, and alerts waiting for a retry or failed never crowd out due ones.

One process of a scaled-out install delivers, the one holding lock:notify, so an alert goes out
once, not once per process. The lock is re-taken every duty.LEASE_SECONDS: a process that lost
it in a Redis outage (and another took over) stops delivering within a lease.

Retries are decided in one place (`_attempt`), by exception type: a TransientError (timeout,
connection error, HTTP 408/429/5xx, broker down) or anything unexpected retries after
retry_base_seconds * 2**(attempts-1) until max_attempts; a PermanentError (other HTTP status,
unset URL, unknown channel) fails the channel at once. A delivered channel is never sent again;
nor is an Apprise URL that took the alert while another failed (its key is in the channel's
"sent_to").
Delivery is at least once: a crash between sending and writing back sends that channel again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from hsid.alerts.channels import AlertChannels, alert_data
from hsid.core import metrics
from hsid.core.config import ALERT_CHANNELS, alert_settings
from hsid.core.context import StageContext
from hsid.core.duty import Lock, run_duty
from hsid.core.errors import STORE_ERRORS, PermanentError, TransientError

log = structlog.get_logger(__name__)

NOTIFY_DUTY = "notify"  # lock:notify: one process of a scaled-out install delivers
MAX_ALERTS_PER_POLL = 100
MAX_CONCURRENT_SENDS = 8  # so one slow webhook doesn't hold the other alerts up
STANDBY_POLLS = 5  # a process without the lock tries again after this many poll intervals
MAX_RETRY_DELAY_SECONDS = 86_400.0  # caps the doubling, so a large max_attempts cannot overflow
WRITE_BACK_TIMEOUT_SECONDS = 10.0
FINAL_STATES = ("delivered", "failed")  # a channel's other state is "retrying"

# A channel is due unless final or waiting for its retry; $1 is the notifier's clock.
SELECT_DUE_ALERTS = """
SELECT id, event_id, rule_id, severity, created_at, channels, dedup_key, metadata
FROM alerts
WHERE status = 'pending'
  AND coalesce(metadata->>'delivery_final', 'false') <> 'true'
  AND (metadata->>'next_attempt_at' IS NULL OR (metadata->>'next_attempt_at')::timestamptz <= $1)
ORDER BY created_at
LIMIT $2
"""
# Merges only the delivery keys, and only into a still pending alert: one acknowledged or
# dismissed meanwhile keeps what the user made of it. $3 is set once the alert is delivered.
UPDATE_ALERT_DELIVERY = """
UPDATE alerts
SET metadata = (CASE WHEN json_typeof(metadata) = 'object' THEN metadata::jsonb
                     ELSE '{}'::jsonb END || $2::jsonb)::json,
    updated_at = now(),
    status = CASE WHEN $3::timestamptz IS NULL THEN status ELSE 'delivered' END,
    delivered_at = coalesce($3::timestamptz, delivered_at)
WHERE id = $1 AND status = 'pending'
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class _Alert:
    """A due alert, parsed at the edge: its channels, their delivery state, and its payload."""

    id: uuid.UUID
    channels: tuple[str, ...]
    delivery: dict[str, dict[str, Any]]
    data: dict[str, Any]  # the payload's "data"

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> _Alert:
        meta = row["metadata"] if isinstance(row["metadata"], dict) else {}
        channels = row["channels"]
        channels = [channels] if isinstance(channels, str) else channels or []
        found = meta.get("delivery")
        delivery = found if isinstance(found, dict) else {}
        return cls(row["id"], tuple(dict.fromkeys(map(str, channels))), delivery,
                   alert_data(row))


def _is_due(entry: dict[str, Any], now: datetime) -> bool:
    after = entry.get("next_attempt_at")
    return entry.get("state") not in FINAL_STATES and (
        after is None or datetime.fromisoformat(after) <= now)


def _summarise(channels: tuple[str, ...], delivery: dict[str, dict[str, Any]],
               ) -> tuple[dict[str, Any], datetime | None]:
    """The delivery keys to merge into metadata, and the alert's delivered_at: the first
    success, once every channel is final (None while any is pending, or if none succeeded)."""
    entries = [delivery.get(c) or {} for c in channels]
    final = all(e.get("state") in FINAL_STATES for e in entries)
    waits = [datetime.fromisoformat(e["next_attempt_at"]) for e in entries
             if e.get("next_attempt_at")]
    successes = [datetime.fromisoformat(e["delivered_at"]) for e in entries
                 if e.get("state") == "delivered"]
    state = {"delivery": delivery, "delivery_final": final,
             "next_attempt_at": None if final or not waits else min(waits).isoformat()}
    return state, min(successes) if final and successes else None


class AlertDelivery:
    """Stage: every poll_seconds, delivers the due channels of pending alerts, while this
    process holds lock:notify; `run` returns once `stopping` is set."""

    def __init__(self, context: StageContext, *,
                 channels: Callable[[], AlertChannels] | None = None) -> None:
        """`channels` makes the channels with what they need beyond [alerts] (pictures,
        links, the site's zone, a shared MQTT connection); default: [alerts] alone."""
        config = self._config = alert_settings(context.config)
        self._make_channels = channels or (lambda: AlertChannels(config))
        self._pool = context.pool
        self._redis = context.redis
        self._keyspace = context.keyspace
        self._stopping = context.stopping
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        self._channels: AlertChannels | None = None

    async def run(self) -> None:
        async with self._make_channels() as self._channels:
            await run_duty(NOTIFY_DUTY, self._deliver_due, self._config.poll_seconds,
                           self._stopping, lock=Lock(self._redis, self._keyspace),
                           standby=self._config.poll_seconds * STANDBY_POLLS)

    async def _deliver_due(self) -> None:
        """One poll: the due channels of up to MAX_ALERTS_PER_POLL alerts, all at once."""
        rows = await self._pool.fetch(SELECT_DUE_ALERTS, datetime.now(UTC), MAX_ALERTS_PER_POLL)
        async with asyncio.TaskGroup() as group:
            for row in rows:
                group.create_task(self._deliver_alert(_Alert.from_row(row)))

    async def _deliver_alert(self, alert: _Alert) -> None:
        now = datetime.now(UTC)
        due = [c for c in alert.channels if _is_due(alert.delivery.get(c) or {}, now)]
        entries = await asyncio.gather(*(self._attempt(alert, c) for c in due))
        delivery = {**alert.delivery, **dict(zip(due, entries, strict=True))}
        state, delivered_at = _summarise(alert.channels, delivery)
        try:  # shielded: a shutdown must not lose what was just sent
            stored = await asyncio.shield(asyncio.wait_for(self._pool.fetchval(
                UPDATE_ALERT_DELIVERY, alert.id, state, delivered_at), WRITE_BACK_TIMEOUT_SECONDS))
        except STORE_ERRORS as err:
            log.warning("alert_state_not_stored", alert_id=str(alert.id),
                        error=str(err) or type(err).__name__)
            return
        if stored is None:
            log.info("alert_no_longer_pending", alert_id=str(alert.id))
        elif state["delivery_final"] and delivered_at is None:
            log.error("alert_undelivered", alert_id=str(alert.id), channels=list(alert.channels),
                      errors={c: (delivery.get(c) or {}).get("last_error") for c in alert.channels})

    async def _attempt(self, alert: _Alert, channel: str) -> dict[str, Any]:
        """Send one channel once; its new delivery entry. The only place retries are decided."""
        previous = alert.delivery.get(channel) or {}
        attempts = int(previous.get("attempts") or 0) + 1
        sent = [str(key) for key in previous.get("sent_to") or []]  # Apprise URLs done
        error, retry = None, False
        async with self._slots:
            try:
                assert self._channels is not None, "run() opens the channels"
                await self._channels.send(channel, alert.data, sent)
            except PermanentError as err:
                error = str(err)
            except TransientError as err:
                error, retry = str(err), True
            except Exception as err:  # a bug or an unforeseen library error: retried, loudly
                log.warning("alert_channel_crashed", channel=channel, exc_info=True)
                error, retry = f"{type(err).__name__}: {err}", True
        now = datetime.now(UTC)
        entry: dict[str, Any] = {"state": "delivered", "attempts": attempts, "last_error": error,
                                 "delivered_at": None, "next_attempt_at": None}
        if sent:
            entry["sent_to"] = sent
        if error is None:
            entry["delivered_at"] = now.isoformat()
        elif retry and attempts < self._config.max_attempts:
            delay = min(self._config.retry_base_seconds * 2 ** (attempts - 1),
                        MAX_RETRY_DELAY_SECONDS)
            entry.update(state="retrying", next_attempt_at=(now + timedelta(seconds=delay))
                         .isoformat())
        else:
            entry["state"] = "failed"
        self._report(alert, channel, entry)
        return entry

    def _report(self, alert: _Alert, channel: str, entry: dict[str, Any]) -> None:
        label, state = channel if channel in ALERT_CHANNELS else "unknown", entry["state"]
        metrics.ALERT_DELIVERIES.labels(channel=label, outcome=state).inc()
        if state == "delivered":
            log.info("alert_delivered", alert_id=str(alert.id), channel=channel,
                     attempts=entry["attempts"])
            return
        log.warning("alert_delivery_failed", alert_id=str(alert.id), channel=channel, state=state,
                    attempts=entry["attempts"], error=entry["last_error"],
                    next_attempt_at=entry["next_attempt_at"])
