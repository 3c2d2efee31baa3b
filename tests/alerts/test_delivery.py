"""The alert notifier against real PostgreSQL, Redis, an HTTP receiver and the MQTT broker."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from hsid.alerts.channels import AlertChannels
from hsid.alerts.delivery import SELECT_DUE_ALERTS, AlertDelivery
from hsid.core import metrics
from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.imaging.annotate import CLASS_COLOURS
from hsid.imaging.evidence import Evidence
from tests import seed
from tests.alerts.receivers import MQTT_HOST, MQTT_PORT, Receiver, Request, needs_broker
from tests.conftest import free_port
from tests.imaging.pictures import decoded, detections_of_one_image, grey_jpeg, near
from tests.support import eventually

CAMERA, CAMERA_NAME = "front_door", "Front door"
HMAC_KEY = "s3cret-key"
FAST = {"poll_seconds": 0.05, "retry_base_seconds": 0.05}

INSERT_ALERT = """
INSERT INTO alerts (event_id, rule_id, severity, status, channels, dedup_key, metadata)
VALUES ($1, $2, 'high', $3, $4, $5, $6) RETURNING id
"""
SELECT_ALERT = "SELECT * FROM alerts WHERE id = $1"


def alert_metadata(started_at: datetime, rule_name: str | None = "Night person") -> dict[str, Any]:
    """Metadata as the rule engine writes it (no "delivery" key yet)."""
    return {"camera_id": CAMERA, "camera_name": CAMERA_NAME, "risk_score": 82,
            "risk_level": "high", "summary": "A person at the door at night",
            "started_at": started_at.isoformat(), "rule_name": rule_name,
            "matched_rules": [], "object_types": ["person"], "zones": ["Porch"]}


@dataclass
class Alerts:
    """Inserts alerts (with their camera, event and rule) and reads them back."""

    db: asyncpg.Pool
    event_id: int
    rule_id: uuid.UUID
    started_at: datetime

    async def add(self, channels: list[str], status: str = "pending", *,
                  no_metadata: bool = False) -> uuid.UUID:
        meta = None if no_metadata else alert_metadata(self.started_at)
        return await self.db.fetchval(INSERT_ALERT, self.event_id, self.rule_id, status, channels,
                                      f"{CAMERA}:{uuid.uuid4()}", meta)

    async def get(self, alert_id: uuid.UUID) -> asyncpg.Record:
        return await self.db.fetchrow(SELECT_ALERT, alert_id)

    async def delivery(self, alert_id: uuid.UUID, channel: str) -> dict[str, Any]:
        return ((await self.get(alert_id))["metadata"].get("delivery") or {}).get(channel) or {}

    async def final(self, alert_id: uuid.UUID) -> asyncpg.Record | None:
        row = await self.get(alert_id)
        return row if (row["metadata"] or {}).get("delivery_final") else None


@pytest.fixture
async def alerts(db: asyncpg.Pool) -> Alerts:
    started_at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    await seed.camera(db, CAMERA, name=CAMERA_NAME)
    event_id = await seed.event(db, CAMERA, started_at=started_at)
    rule_id = await seed.alert_rule(db, "Night person")
    return Alerts(db, event_id, rule_id, started_at)


StartNotifier = Callable[..., asyncio.Task[None]]


@pytest.fixture
async def start_notifier(db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
                         config: Config) -> AsyncIterator[StartNotifier]:
    """Starts AlertDelivery.run with fast timings and `alerts` overrides; all are stopped (and must
    return by themselves) at the end of the test."""
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def start(pool: asyncpg.Pool = db, client: aioredis.Redis = redis, *,
              public_url: str | None = None, **overrides: Any) -> asyncio.Task[None]:
        """With public_url (even ""), the channels find pictures, as the daemon's do."""
        overridden = config.with_overrides({"alerts": {**FAST, **overrides}})
        channels = None if public_url is None else (lambda: AlertChannels(
            overridden.alerts, evidence=Evidence(pool, config.paths, config.detector.max_pixels),
            public_url=public_url, zone=UTC))
        notifier = AlertDelivery(StageContext(overridden, pool, client, keyspace,
                                              stopping=stopping), channels=channels)
        tasks.append(asyncio.create_task(notifier.run()))
        return tasks[-1]

    yield start
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_webhook_gets_the_signed_payload_and_the_alert_is_delivered(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["webhook"])
    start_notifier(webhook_url=receiver.url, webhook_hmac_key=HMAC_KEY)

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    [request] = receiver.requests
    meta = row["metadata"]
    assert json.loads(request.body) == {"type": "alert", "data": {
        "id": str(row["id"]), "event_id": row["event_id"], "rule_id": str(row["rule_id"]),
        "rule_name": meta["rule_name"], "severity": row["severity"],
        "camera_id": meta["camera_id"], "camera_name": meta["camera_name"],
        "risk_score": meta["risk_score"], "risk_level": meta["risk_level"],
        "summary": meta["summary"], "started_at": meta["started_at"],
        "created_at": row["created_at"].isoformat(), "dedup_key": row["dedup_key"],
        # without [api] public_url a path; without pictures to look in, no thumbnail
        "snapshot_url": f"/api/events/{row['event_id']}/snapshot", "thumbnail_url": None}}
    expected = hmac.new(HMAC_KEY.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Hsid-Signature"], f"sha256={expected}")
    assert request.headers["Content-Type"] == "application/json"
    webhook = meta["delivery"]["webhook"]
    assert (webhook["state"], webhook["attempts"], webhook["last_error"]) == ("delivered", 1, None)
    assert row["delivered_at"] == datetime.fromisoformat(webhook["delivered_at"])
    assert (meta["delivery_final"], meta["next_attempt_at"]) == (True, None)
    assert meta["zones"] == ["Porch"], "the rule engine's metadata is kept"


async def test_server_error_is_retried_then_delivered(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    sample = ("hsid_alert_deliveries_total", {"channel": "webhook", "outcome": "retrying"})
    retrying_before = metrics.REGISTRY.get_sample_value(*sample) or 0.0
    receiver.statuses = [500]
    alert_id = await alerts.add(["webhook"])
    start_notifier(webhook_url=receiver.url)

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    assert receiver.count(alert_id) == 2
    webhook = row["metadata"]["delivery"]["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("delivered", 2)
    assert metrics.REGISTRY.get_sample_value(*sample) == retrying_before + 1


async def test_client_error_fails_at_once_without_retries(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    receiver.status = 404
    alert_id = await alerts.add(["webhook"])
    with capture_logs() as logs:
        start_notifier(webhook_url=receiver.url)
        row = await eventually(lambda: alerts.final(alert_id), what="delivery final")
        await _delivered_after(alerts)  # later polls happen and leave it alone

    webhook = row["metadata"]["delivery"]["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 1)
    assert "404" in webhook["last_error"]
    assert receiver.count(alert_id) == 1
    assert (await alerts.get(alert_id))["status"] == "pending"
    undelivered = [e for e in logs if e["event"] == "alert_undelivered"]
    assert [e["alert_id"] for e in undelivered] == [str(alert_id)]
    assert "404" in undelivered[0]["errors"]["webhook"]


async def test_exhausted_retries_fail_the_channel_and_leave_the_alert_pending(
    db: asyncpg.Pool, alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    receiver.status = 503
    alert_id = await alerts.add(["webhook"])
    start_notifier(webhook_url=receiver.url, max_attempts=3)

    row = await eventually(lambda: alerts.final(alert_id), what="delivery final")
    await _delivered_after(alerts)

    assert (row["status"], row["delivered_at"]) == ("pending", None)
    assert row["metadata"]["next_attempt_at"] is None
    webhook = row["metadata"]["delivery"]["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 3)
    assert "503" in webhook["last_error"]
    assert receiver.count(alert_id) == 3, "not selected again once final"
    first, second, third = (r.at for r in receiver.requests if r.alert_id == str(alert_id))
    assert second - first >= 0.05 * 0.9 and third - second >= 0.1 * 0.9, "the delay doubles"
    due = await db.fetch(SELECT_DUE_ALERTS, datetime.now(UTC), 100)
    assert alert_id not in {r["id"] for r in due}


async def test_webhook_timeout_is_retried(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    receiver.delay = 0.8
    alert_id = await alerts.add(["webhook"])
    start_notifier(webhook_url=receiver.url, webhook_timeout_seconds=0.5, max_attempts=2)

    row = await eventually(lambda: alerts.final(alert_id), what="delivery final")

    webhook = row["metadata"]["delivery"]["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 2)
    assert webhook["last_error"].startswith("webhook unreachable")
    assert receiver.count(alert_id) == 2


async def test_misconfigured_channels_fail_with_the_reason_and_others_deliver(
    alerts: Alerts, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["webhook", "mqtt", "sms", "log"])
    start_notifier(webhook_url="", mqtt_url="")

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    delivery = row["metadata"]["delivery"]
    assert {c: (e["state"], e["attempts"]) for c, e in delivery.items()} == {
        "webhook": ("failed", 1), "mqtt": ("failed", 1), "sms": ("failed", 1),
        "log": ("delivered", 1)}
    assert "alerts.webhook_url is not set" in delivery["webhook"]["last_error"]
    assert "alerts.mqtt_url is not set" in delivery["mqtt"]["last_error"]
    assert "unknown channel 'sms'" in delivery["sms"]["last_error"]
    assert row["delivered_at"] == datetime.fromisoformat(delivery["log"]["delivered_at"])


async def test_log_channel_writes_the_alert_record(
    alerts: Alerts, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["log"])
    with capture_logs() as logs:
        start_notifier()
        row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"),
                               what="delivered")

    [record] = [e for e in logs if e["event"] == "alert"]
    assert record["log_level"] == "warning"
    assert (record["id"], record["camera_id"], record["dedup_key"], record["risk_score"]) == (
        str(alert_id), row["metadata"]["camera_id"], row["dedup_key"],
        row["metadata"]["risk_score"])


async def test_missing_metadata_keys_are_sent_as_null(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["webhook"], no_metadata=True)
    start_notifier(webhook_url=receiver.url)

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    data = json.loads(receiver.requests[0].body)["data"]
    assert data["id"] == str(alert_id)
    assert [data[k] for k in ("camera_id", "rule_name", "risk_score", "summary")] == [None] * 4
    assert row["metadata"]["delivery"]["webhook"]["state"] == "delivered"


@needs_broker
async def test_mqtt_publishes_the_payload_to_the_camera_topic(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    topic = f"hsid-test/{uuid.uuid4().hex}"
    alert_id = await alerts.add(["mqtt", "webhook"])
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as subscriber:
        await subscriber.subscribe(f"{topic}/#", qos=1)
        start_notifier(mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", mqtt_topic=topic,
                       webhook_url=receiver.url)
        message = await asyncio.wait_for(anext(aiter(subscriber.messages)), 10)

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")
    assert str(message.topic) == f"{topic}/{row['metadata']['camera_id']}"
    assert (message.qos, message.retain) == (1, False)
    assert isinstance(message.payload, bytes)
    assert message.payload == receiver.requests[0].body, "the same payload on every channel"
    assert json.loads(message.payload)["data"]["id"] == str(alert_id)
    assert row["metadata"]["delivery"]["mqtt"]["state"] == "delivered"


async def test_unreachable_broker_is_retried_then_fails(
    alerts: Alerts, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["mqtt"])
    start_notifier(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", max_attempts=2)

    row = await eventually(lambda: alerts.final(alert_id), what="delivery final")

    mqtt = row["metadata"]["delivery"]["mqtt"]
    assert (mqtt["state"], mqtt["attempts"]) == ("failed", 2)
    assert "MQTT broker 127.0.0.1" in mqtt["last_error"]


async def test_acknowledged_alert_is_never_delivered(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    acknowledged = await alerts.add(["webhook"], status="acknowledged")
    before = await alerts.get(acknowledged)
    pending = await alerts.add(["webhook"])
    start_notifier(webhook_url=receiver.url)

    await eventually(lambda: _with_status(alerts, pending, "delivered"), what="delivered")

    assert [r.alert_id for r in receiver.requests] == [str(pending)]
    assert await alerts.get(acknowledged) == before


async def test_alert_acknowledged_during_delivery_is_left_as_the_user_set_it(
    db: asyncpg.Pool, alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["webhook"])

    async def acknowledge(request: Request) -> None:
        if request.alert_id == str(alert_id):
            await db.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = $1", alert_id)

    receiver.on_request, receiver.statuses = acknowledge, [500]
    start_notifier(webhook_url=receiver.url)
    await eventually(lambda: receiver.count(alert_id), what="first attempt")
    await _delivered_after(alerts)

    row = await alerts.get(alert_id)
    assert row["status"] == "acknowledged"
    assert "delivery" not in row["metadata"], "nothing written over the user's decision"
    assert receiver.count(alert_id) == 1, "no retry for an acknowledged alert"


async def test_two_notifiers_deliver_each_alert_exactly_once(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    receiver.delay = 0.2  # both would see the same pending alerts while a delivery is slow
    ids = [await alerts.add(["webhook"]) for _ in range(5)]
    start_notifier(webhook_url=receiver.url)
    start_notifier(webhook_url=receiver.url)

    for alert_id in ids:
        await eventually(lambda a=alert_id: _with_status(alerts, a, "delivered"), what="delivered")

    assert collections.Counter(r.alert_id for r in receiver.requests) == {
        str(a): 1 for a in ids}
    assert [(await alerts.delivery(a, "webhook"))["attempts"] for a in ids] == [1] * 5


async def test_unreachable_stores_are_logged_and_the_stage_carries_on(
    database_url: str, config: Config, start_notifier: StartNotifier
) -> None:
    closed_pool = await asyncpg.create_pool(database_url, min_size=0)
    await closed_pool.close()
    no_redis = aioredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    with capture_logs() as logs:
        without_db = start_notifier(pool=closed_pool)
        without_redis = start_notifier(client=no_redis)
        await eventually(lambda: len([e for e in logs
                                      if e["event"] == "notify_store_unavailable"]) == 2,
                         what="one warning from each notifier")
        await asyncio.sleep(0.3)  # several more polls: still running, still one warning each

    assert not without_db.done() and not without_redis.done()
    assert len([e for e in logs if e["event"] == "notify_store_unavailable"]) == 2
    await no_redis.aclose()


async def _with_status(alerts: Alerts, alert_id: uuid.UUID, status: str) -> asyncpg.Record | None:
    row = await alerts.get(alert_id)
    return row if row["status"] == status else None


async def _delivered_after(alerts: Alerts) -> None:
    """Wait until a log alert added now is delivered: proof that the notifier polled again."""
    marker = await alerts.add(["log"])
    await eventually(lambda: _with_status(alerts, marker, "delivered"), what="a later poll")


async def _alert_with_picture(alerts: Alerts, config: Config, channels: list[str]
                              ) -> tuple[uuid.UUID, int]:
    """An alert whose event has a person (with a thumbnail) in an 800x600 snapshot; returns
    the alert and the person's detection id."""
    folder = config.paths.camera_root / CAMERA
    folder.mkdir(exist_ok=True)
    (folder / "snap.jpg").write_bytes(grey_jpeg())
    thumbnail = config.paths.state_dir / "thumb.jpg"
    thumbnail.write_bytes(grey_jpeg(50, 50))
    [person] = await detections_of_one_image(alerts.db, folder / "snap.jpg",
                                             ("person", 0.93, 100, 150, 200, 300),
                                             camera_id=CAMERA, thumbnail=thumbnail)
    await alerts.db.execute("UPDATE events SET detection_ids = $2 WHERE id = $1",
                            alerts.event_id, json.dumps([person]))
    return await alerts.add(channels), person


async def test_apprise_push_carries_the_annotated_snapshot_and_a_link(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier, config: Config
) -> None:
    alert_id, _ = await _alert_with_picture(alerts, config, ["apprise"])
    start_notifier(public_url="https://hsid.example.net", image_width=400,
                   apprise_urls=[receiver.url.replace("http://", "json://", 1)])

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    [request] = receiver.requests
    body = json.loads(request.body)
    assert body["title"] == f"{CAMERA_NAME}: high risk, person"
    assert body["message"].splitlines() == [
        "A person at the door at night", "Thu 26 Nov 2026, 12:00:00 UTC",
        f"https://hsid.example.net/api/events/{alerts.event_id}"]
    [attachment] = body["attachments"]
    pixels = decoded(base64.b64decode(attachment["base64"]))
    assert pixels.shape == (300, 400, 3), "scaled to alerts.image_width"
    assert near(pixels[150, 50], CLASS_COLOURS["person"]), "the person's box, where it is"
    apprise = row["metadata"]["delivery"]["apprise"]
    assert apprise["state"] == "delivered" and len(apprise["sent_to"]) == 1


async def test_apprise_push_without_its_picture_still_goes_out(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    alert_id = await alerts.add(["apprise"])  # its event has no detections, so no picture
    start_notifier(public_url="", apprise_urls=[receiver.url.replace("http://", "json://")])

    await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    body = json.loads(receiver.requests[0].body)
    assert not body.get("attachments") and body["title"] == f"{CAMERA_NAME}: high risk"


async def test_apprise_retries_reach_only_the_urls_that_failed(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier
) -> None:
    url = receiver.url.replace("http://", "json://", 1)
    receiver.statuses = [200, 503]
    alert_id = await alerts.add(["apprise"])
    start_notifier(public_url="", apprise_urls=[f"{url}?-n=1", f"{url}?-n=2"])

    row = await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    apprise = row["metadata"]["delivery"]["apprise"]
    assert (apprise["attempts"], len(apprise["sent_to"])) == (2, 2)
    assert len(receiver.requests) == 3, "the URL that took it first was not sent to again"


async def test_webhook_links_to_the_snapshot_and_thumbnail_under_the_public_url(
    alerts: Alerts, receiver: Receiver, start_notifier: StartNotifier, config: Config
) -> None:
    alert_id, person = await _alert_with_picture(alerts, config, ["webhook"])
    start_notifier(public_url="https://hsid.example.net", webhook_url=receiver.url)

    await eventually(lambda: _with_status(alerts, alert_id, "delivered"), what="delivered")

    data = json.loads(receiver.requests[0].body)["data"]
    assert data["snapshot_url"] == (
        f"https://hsid.example.net/api/events/{alerts.event_id}/snapshot")
    assert data["thumbnail_url"] == (
        f"https://hsid.example.net/api/detections/{person}/thumbnail")
