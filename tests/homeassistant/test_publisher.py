"""Home Assistant's publisher against the local Mosquitto, with a real MQTT subscriber:
discovery, states as the pipeline publishes them, removal, availability and its will."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import asyncpg
import redis.asyncio as aioredis

from hsid.alerts.channels import AlertChannels
from hsid.core.config import Config, alert_settings
from hsid.core.constants import SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL
from hsid.core.keyspace import Keyspace
from hsid.homeassistant.discovery import Topics
from hsid.imaging.annotate import CLASS_COLOURS
from tests import seed
from tests.alerts.receivers import MQTT_HOST, MQTT_PORT, needs_broker
from tests.conftest import free_port
from tests.homeassistant.conftest import BROKER_URL, Broker, StartPublisher
from tests.homeassistant.ha_schema import problems
from tests.imaging.pictures import decoded, detections_of_one_image, grey_jpeg, near
from tests.support import Daemon, eventually
from tests.test_daemon import daemon_env

pytestmark = needs_broker


async def publish(redis: aioredis.Redis, keyspace: Keyspace, kind: str, data: dict,
                  channel: str = SECURITY_EVENTS_CHANNEL) -> None:
    """A message as the pipeline publishes it (the whole shape: core/messages.py decodes
    it, and the publisher ignores one that is not), once the publisher listens."""
    name = keyspace.channel(channel)

    async def listened() -> bool:
        return bool((await redis.pubsub_numsub(name))[0][1])

    await eventually(listened, what="the publisher listens")
    await redis.publish(name, json.dumps({"type": kind, "data": data}))


async def test_every_camera_and_the_hub_are_discovered_as_home_assistant_documents(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config, db: asyncpg.Pool
) -> None:
    await seed.camera(db, "front_door", name="Front door")
    topics = Topics(ha_config.mqtt)
    start_publisher()

    await broker.wait_for(topics.inventory, lambda p: json.loads(p) == ["front_door"])
    assert broker.last(topics.availability) == b"online"
    configs = {topic: json.loads(seen[-1].payload) for topic, seen in broker.messages.items()
               if topic.endswith("/config")}
    assert {config["name"] for config in configs.values()} == {
        "Person", "Vehicle", "Animal", "Risk", "Snapshot", "Alert",
        "Queue depth", "Detector provider", "Inference rate", "Health"}
    for topic, config in configs.items():
        assert problems(topic, config, ha_config.mqtt.discovery_prefix) == [], topic
    camera_devices = {c["device"]["name"] for c in configs.values() if "via_device" in c["device"]}
    assert camera_devices == {"Front door"}
    for group in ("person", "vehicle", "animal"):
        assert broker.last(topics.camera("front_door", group)) == b"OFF"

    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as late:  # Home Assistant, started later
        await late.subscribe(f"{ha_config.mqtt.discovery_prefix}/#", qos=1)
        retained = set()
        async with asyncio.timeout(5):
            async for message in late.messages:
                assert message.retain
                retained.add(str(message.topic))
                if retained == set(configs):
                    break


async def test_person_on_then_off_risk_snapshot_and_alert_follow_the_pipeline(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config, db: asyncpg.Pool,
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    await seed.camera(db, "front_door", name="Front door")
    image = ha_config.paths.camera_root / "front_door" / "snap.jpg"
    image.parent.mkdir()
    image.write_bytes(grey_jpeg())
    now = datetime.now(UTC)
    [person] = await detections_of_one_image(db, image, ("person", 0.94, 100, 150, 200, 300),
                                             at=now)
    topics = Topics(ha_config.mqtt)
    start_publisher()
    await broker.wait_for(topics.inventory)

    await publish(redis, keyspace, "detection", {
        "camera_id": "front_door", "file_path": str(image), "detected_at": now.isoformat(),
        "captured_at": now.isoformat(),
        "detections": [{"id": person, "object_type": "person", "confidence": 0.94}]})
    await broker.wait_for(topics.camera("front_door", "person"), lambda p: p == b"ON")
    turned_on = time.monotonic()
    assert broker.last(topics.camera("front_door", "vehicle")) == b"OFF"

    snapshot = decoded(await broker.wait_for(topics.camera("front_door", "snapshot")))
    assert snapshot.shape == (300, 400, 3), "scaled to alerts.image_width"
    assert near(snapshot[150, 50], CLASS_COLOURS["person"]), "annotated where the person is"

    await broker.wait_for(topics.camera("front_door", "person"), lambda p: p == b"OFF")
    assert 0.8 <= time.monotonic() - turned_on <= 3.0, "off after clear_seconds (1 s)"

    await publish(redis, keyspace, "event", {
        "id": 7, "event_id": 7, "batch_id": "b", "camera_id": "front_door", "risk_score": 82,
        "risk_level": "high", "summary": "A person at the door", "started_at": now.isoformat()})
    assert await broker.wait_for(topics.camera("front_door", "risk")) == b"82"
    attributes = json.loads(await broker.wait_for(topics.camera("front_door", "risk/attributes")))
    assert attributes == {"risk_level": "high", "summary": "A person at the door",
                          "started_at": now.isoformat(), "event_id": 7,
                          "snapshot_url": "https://hsid.example.net/api/events/7/snapshot"}

    await publish(redis, keyspace, "alert", {
        "id": "a1", "event_id": 7, "rule_id": None, "severity": "high",
        "created_at": now.isoformat(), "dedup_key": "front_door:person", "rule_name": "Night",
        "camera_id": "front_door", "risk_score": 82, "risk_level": "high",
        "summary": "A person at the door", "started_at": now.isoformat()})
    fired = json.loads(await broker.wait_for(topics.camera("front_door", "alert")))
    assert fired["event_type"] == "alert" and fired["severity"] == "high"
    assert broker.messages[topics.camera("front_door", "alert")][-1].retain is False


async def test_late_backlog_uploads_do_not_turn_presence_on(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config, db: asyncpg.Pool,
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    await seed.camera(db, "front_door")
    topics = Topics(ha_config.mqtt)
    start_publisher()
    await broker.wait_for(topics.inventory)
    now = datetime.now(UTC)
    detection = {"camera_id": "front_door", "file_path": "/nowhere.jpg",
                 "detected_at": now.isoformat(),
                 "detections": [{"id": 1, "object_type": "dog", "confidence": 0.9}]}

    await publish(redis, keyspace, "detection", {
        **detection, "captured_at": (now - timedelta(hours=2)).isoformat()})
    await publish(redis, keyspace, "detection", {**detection, "captured_at": now.isoformat()})

    await broker.wait_for(topics.camera("front_door", "animal"), lambda p: p == b"ON")
    assert [s.payload for s in broker.messages[topics.camera("front_door", "animal")]] == [
        b"OFF", b"ON"], "only the live one turned it on"


async def test_hub_sensors_follow_the_system_status(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config,
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    topics = Topics(ha_config.mqtt)
    start_publisher()
    await broker.wait_for(topics.inventory)

    await publish(redis, keyspace, "system_status", {
        "health": "healthy", "database": {}, "redis": {}, "stages": {},
        "queues": {"detection_queue": 2, "analysis_queue": 1}, "dlq": {},
        "detector": {"provider": "CPUExecutionProvider"}, "inference_fps": 12.5,
        "uptime_seconds": 5, "timestamp": "2026-11-26T02:14:09.000Z"},
        channel=SYSTEM_STATUS_CHANNEL)

    assert await broker.wait_for(topics.hub("queue_depth")) == b"3"
    assert await broker.wait_for(topics.hub("detector_provider")) == b"CPUExecutionProvider"
    assert await broker.wait_for(topics.hub("inference_rate")) == b"12.50"
    assert await broker.wait_for(topics.hub("health")) == b"healthy"


async def test_a_deleted_camera_has_its_entries_removed_now_or_at_the_next_start(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config, db: asyncpg.Pool,
) -> None:
    for camera in ("front_door", "garage", "shed"):
        await seed.camera(db, camera)
    topics = Topics(ha_config.mqtt)
    first = start_publisher()
    await broker.wait_for(topics.inventory, lambda p: len(json.loads(p)) == 3)
    garage_config = topics.discovery("binary_sensor", topics.camera_node("garage"), "person")
    shed_config = topics.discovery("image", topics.camera_node("shed"), "snapshot")

    await db.execute("DELETE FROM cameras WHERE id = 'garage'")
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as home_assistant:  # it restarted: birth
        await home_assistant.publish(topics.birth, "online")
    await broker.wait_for(topics.inventory, lambda p: json.loads(p) == ["front_door", "shed"])
    assert broker.last(garage_config) == b""
    assert broker.last(topics.camera("garage", "person")) == b""

    await first.stop()
    await db.execute("DELETE FROM cameras WHERE id = 'shed'")  # while hsid is down
    start_publisher()
    await broker.wait_for(topics.inventory, lambda p: json.loads(p) == ["front_door"])
    assert broker.last(shed_config) == b""
    assert broker.last(topics.camera("front_door", "person")) == b"OFF"


async def test_a_clean_stop_says_offline(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config
) -> None:
    topics = Topics(ha_config.mqtt)
    running = start_publisher()
    await broker.wait_for(topics.availability, lambda p: p == b"online")

    await running.stop()

    assert broker.last(topics.availability) == b"offline"
    assert broker.messages[topics.availability][-1].retain is False  # delivered live


async def test_mqtt_alerts_go_through_home_assistants_connection(
    start_publisher: StartPublisher, broker: Broker, ha_config: Config,
) -> None:
    alerts = alert_settings(ha_config.with_overrides(
        {"alerts": {"mqtt_topic": f"{broker.base}/alerts"}}))
    assert alerts.mqtt_url == BROKER_URL, "[alerts] mqtt_url empty: the [mqtt] broker"
    running = start_publisher()
    await broker.wait_for(Topics(ha_config.mqtt).inventory)
    assert running.link.connected

    async with AlertChannels(alerts, link=running.link) as channels:
        await channels.send("mqtt", {"id": "a1", "event_id": 3, "camera_id": "front_door"})

    body = json.loads(await broker.wait_for(f"{broker.base}/alerts/front_door"))
    assert body["data"]["snapshot_url"] == "/api/events/3/snapshot"


def test_the_will_says_offline_when_the_daemon_is_killed(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str, camera_root: Path,
    state_dir: Path,
) -> None:
    """kill -9 leaves no time for a goodbye: the broker publishes hsid's last will."""
    prefix = f"hsid-test-kill-{time.time_ns()}"
    availability = f"{prefix}/hsid/status"
    env = daemon_env(database_url, redis_url, redis_prefix, camera_root, state_dir,
                     free_port(), HSID_MQTT__URL=BROKER_URL,
                     HSID_MQTT__TOPIC_PREFIX=f"{prefix}/hsid",
                     HSID_MQTT__DISCOVERY_PREFIX=f"{prefix}/ha")

    async def watch() -> list[bytes]:
        seen: list[bytes] = []
        topics = {availability}
        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as client:
            await client.subscribe(f"{prefix}/#", qos=1)
            daemon = Daemon(env, ["run", "--stages", "services"], tmp_path / "daemon.log")
            try:
                async with asyncio.timeout(60):
                    async for message in client.messages:
                        topics.add(str(message.topic))
                        if str(message.topic) != availability:
                            continue
                        seen.append(bytes(message.payload))
                        if seen[-1] == b"online":
                            daemon.process.send_signal(signal.SIGKILL)
                        elif seen[-1] == b"offline":
                            break
            finally:
                daemon.process.kill()
                daemon.stop()
                for topic in topics:  # leave nothing retained on a shared broker
                    await client.publish(topic, b"", qos=1, retain=True)
        return seen

    seen = asyncio.run(watch())
    assert seen[-2:] == [b"online", b"offline"]
