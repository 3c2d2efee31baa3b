"""Home Assistant fixtures: the publisher on the local Mosquitto under a prefix of its own,
and a subscriber that records what reaches the broker (and clears what was retained)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiomqtt
import asyncpg
import pytest
import redis.asyncio as aioredis

from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.homeassistant.link import MqttLink
from hsid.homeassistant.publisher import HomeAssistantPublisher
from hsid.imaging.evidence import Evidence
from tests.alerts.receivers import MQTT_HOST, MQTT_PORT

BROKER_URL = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"


@dataclass
class Seen:
    payload: bytes
    retain: bool


@dataclass
class Broker:
    """Every message under `base`/# as it arrives, by topic."""

    base: str
    messages: dict[str, list[Seen]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def last(self, topic: str) -> bytes | None:
        seen = self.messages.get(topic)
        return seen[-1].payload if seen else None

    async def wait_for(self, topic: str, check: Callable[[bytes], bool] = bool,
                       within: float = 10.0) -> bytes:
        """The newest payload on `topic` once `check` holds for it."""
        async with asyncio.timeout(within):
            while True:
                payload = self.last(topic)
                if payload is not None and check(payload):
                    return payload
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    base = f"hsid-test-{uuid.uuid4().hex[:12]}"
    recorded = Broker(base)
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as client:
        await client.subscribe(f"{base}/#", qos=1)

        async def record() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(
                    message.payload).encode()
                recorded.messages.setdefault(str(message.topic), []).append(
                    Seen(payload, message.retain))
                recorded.arrived.set()

        task = asyncio.create_task(record())
        try:
            yield recorded
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for topic in recorded.messages:  # leave nothing retained on a shared broker
                await client.publish(topic, b"", qos=1, retain=True)


@pytest.fixture
def ha_config(config: Config, broker: Broker) -> Config:
    return config.with_overrides({
        "mqtt": {"url": BROKER_URL, "discovery_prefix": f"{broker.base}/ha",
                 "topic_prefix": f"{broker.base}/hsid", "clear_seconds": 1.0},
        "api": {"public_url": "https://hsid.example.net"},
        "alerts": {"image_width": 400},
    })


@dataclass
class Running:
    stopping: asyncio.Event
    task: asyncio.Task[None]
    link: MqttLink

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 10)


StartPublisher = Callable[[], Running]


@pytest.fixture
async def start_publisher(ha_config: Config, db: asyncpg.Pool, redis: aioredis.Redis,
                          keyspace: Keyspace) -> AsyncIterator[StartPublisher]:
    """Starts HomeAssistantPublisher.run; every one is stopped (and must return by itself)
    at the end of the test."""
    started: list[Running] = []

    def start() -> Running:
        stopping, link = asyncio.Event(), MqttLink(ha_config.mqtt)
        publisher = HomeAssistantPublisher(
            StageContext(ha_config, db, redis, keyspace, stopping=stopping), link=link,
            evidence=Evidence(db, ha_config.paths, ha_config.detector.max_pixels))
        started.append(Running(stopping, asyncio.create_task(publisher.run()), link))
        return started[-1]

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()
