"""Home Assistant's publisher: discovery for every camera, and states as the pipeline works.

A stage. It follows the pipeline on `security_events` (as /ws/events does): a detection
turns its camera's person, vehicle or animal sensor on (off again `clear_seconds` after the
last one) and renders the camera's latest annotated snapshot onto its image topic; an event
sets the risk sensor; an alert fires the camera's event entity. The hub's sensors come from
the `system_status` messages. Cameras are read from the database every CAMERA_SYNC_SECONDS
(and at once for a camera the pipeline names first): a new or renamed one is discovered, a
deleted one has its entries and retained states removed.

One process of a scaled-out install publishes, the one holding lock:homeassistant: two
would announce two wills on one availability topic. States are retained, so Home Assistant
shows them after its own restart; it asks for discovery again on `<prefix>/status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from hsid.core.backoff import Backoff
from hsid.core.constants import SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL
from hsid.core.context import StageContext
from hsid.core.duty import Lock, run_duty
from hsid.core.errors import STORE_ERRORS, NotFound, TransientError
from hsid.core.messages import (
    AlertData,
    AlertMessage,
    DetectionData,
    DetectionMessage,
    EventMessage,
    MalformedItem,
    SystemStatusData,
    SystemStatusMessage,
    decode_message,
)
from hsid.core.runtime import pause
from hsid.homeassistant.discovery import (
    OBJECT_GROUPS,
    OFF,
    ON,
    ONLINE,
    Topics,
    camera_configs,
    camera_state_topics,
    group_of,
    hub_configs,
)
from hsid.homeassistant.link import MQTT_ERRORS, MqttLink
from hsid.homeassistant.states import alert_event, hub_values, is_backlog, risk_attributes
from hsid.imaging.evidence import Evidence

log = structlog.get_logger(__name__)

DUTY = "homeassistant"  # lock:homeassistant
STANDBY_SECONDS = 5.0  # a process without the duty asks for it again after this long
CAMERA_SYNC_SECONDS = 10.0  # how soon a camera added or deleted outside the pipeline shows
# "online" again now and then: should a second publisher (a lock lost in a Redis outage)
# die, its will must not leave hsid offline for long.
ONLINE_REFRESH_SECONDS = 60.0
INVENTORY_WAIT_SECONDS = 1.0  # for the broker's retained inventory, before the first sync
POLL_SECONDS = 1.0  # how soon the Redis subscription notices a stop
RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS = 1.0, 60.0

SELECT_CAMERAS = "SELECT id, name FROM cameras ORDER BY id"
SELECT_LAST_EVENT = """
SELECT id, risk_score, risk_level, summary, started_at FROM events
WHERE camera_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1
"""
SELECT_RECENT_CLASSES = """
SELECT object_type, extract(epoch FROM now() - max(detected_at)) AS age FROM detections
WHERE camera_id = $1 AND detected_at > now() - make_interval(secs => $2)
GROUP BY object_type
"""
SELECT_LATEST_DETECTION = """
SELECT id FROM detections WHERE camera_id = $1 ORDER BY detected_at DESC, id DESC LIMIT 1
"""


class HomeAssistantPublisher:
    """Stage: see the module docstring. `run` returns once `stopping` is set, after saying
    "offline"; a broker that is down is waited for with backoff, not counted as a crash."""

    def __init__(self, context: StageContext, *, link: MqttLink, evidence: Evidence) -> None:
        config = context.config
        self._config, self._pool, self._redis = config, context.pool, context.redis
        self._stopping, self._keyspace, self._link = context.stopping, context.keyspace, link
        self._evidence = evidence
        self._topics = Topics(config.mqtt)
        self._cameras: dict[str, str] = {}  # id -> name, as discovered on this connection
        self._previous: set[str] = set()  # cameras of the broker's retained inventory
        self._inventory: list[str] | None = None  # as last published on this connection
        self._inventory_read = asyncio.Event()
        self._rediscover = asyncio.Event()
        self._on_until: dict[tuple[str, str], float] = {}  # (camera, group) -> monotonic
        self._hub: dict[str, str] = {}  # the hub's states as last published
        self._images: dict[str, int] = {}  # camera -> the detection whose image is due
        self._image_due = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._session_over = asyncio.Event()  # see _follow_pipeline
        self._broker_down = False

    async def run(self) -> None:
        await run_duty(DUTY, self._serve, STANDBY_SECONDS, self._stopping,
                       lock=Lock(self._redis, self._keyspace))

    async def _serve(self) -> None:
        """Stay connected until stopping, reconnecting with backoff when the broker goes."""
        backoff = Backoff(RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS)
        while not self._stopping.is_set():
            try:
                async with self._link.connect(goodbye=self._stopping) as client:
                    if self._broker_down:
                        log.info("homeassistant_broker_available")
                    self._broker_down = False
                    log.info("homeassistant_connected", broker=self._broker_name)
                    backoff.reset()
                    await self._session(client)
            except* MQTT_ERRORS as group:
                error = group.exceptions[0]
                delay = backoff.next_delay()
                if not self._broker_down:
                    log.warning("homeassistant_broker_unavailable", broker=self._broker_name,
                                in_s=delay, error=str(error) or type(error).__name__)
                self._broker_down = True
                await self._wait(delay)

    @property
    def _broker_name(self) -> str | None:
        return urlsplit(self._config.mqtt.url).hostname

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's work; returns when stopping, raises when the broker goes."""
        self._cameras.clear()
        self._previous.clear()
        self._inventory = None
        self._inventory_read.clear()
        self._session_over.clear()
        await client.subscribe(self._topics.inventory, qos=1)
        await client.subscribe(self._topics.birth, qos=1)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._listen_broker(client))]
            try:
                await pause(self._inventory_read, INVENTORY_WAIT_SECONDS)
                await self._publish_hub_discovery()
                await self._sync_cameras()
                tasks += [group.create_task(self._follow_pipeline()),
                          group.create_task(self._keep()),
                          group.create_task(self._render_images())]
                await self._stopping.wait()
            finally:  # stopping, or a task failed (the broker went): end them all
                self._session_over.set()
                for task in tasks:
                    task.cancel()

    # --- Broker -------------------------------------------------------------------------

    async def _listen_broker(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = bytes(message.payload) if isinstance(
                message.payload, bytes | bytearray) else str(message.payload).encode()
            if topic == self._topics.inventory and message.retain:
                with contextlib.suppress(ValueError):
                    ids = json.loads(payload or b"[]")
                    self._previous = {str(i) for i in ids} if isinstance(ids, list) else set()
                self._inventory_read.set()
            elif topic == self._topics.birth and payload == ONLINE.encode():
                log.info("homeassistant_restarted")  # it asks for discovery again
                self._rediscover.set()

    async def _publish(self, topic: str, payload: bytes | str, *, retain: bool = True) -> None:
        try:
            await self._link.publish(topic, payload, qos=1, retain=retain)
        except TransientError as err:  # the connection is gone: reconnect from the top
            raise aiomqtt.MqttError(str(err)) from err

    async def _publish_hub_discovery(self) -> None:
        for topic, payload in hub_configs(self._topics).items():
            await self._publish(topic, json.dumps(payload))
        for key, value in self._hub.items():
            await self._publish(self._topics.hub(key), value)

    # --- Cameras ------------------------------------------------------------------------

    async def _sync_cameras(self, force: bool = False) -> None:
        """Discover new and renamed cameras (all with force), remove deleted ones."""
        async with self._sync_lock:
            try:
                rows = await self._pool.fetch(SELECT_CAMERAS)
            except STORE_ERRORS as err:
                log.warning("homeassistant_cameras_unread", error=str(err) or type(err).__name__)
                return
            current = {row["id"]: row["name"] for row in rows}
            gone = (set(self._cameras) | self._previous) - set(current)
            for camera_id in sorted(gone):
                await self._remove_camera(camera_id)
            for camera_id, name in current.items():
                if force or self._cameras.get(camera_id) != name:
                    await self._discover_camera(camera_id, name)
            if sorted(current) != self._inventory:
                await self._publish(self._topics.inventory, json.dumps(sorted(current)))
                self._inventory = sorted(current)
            self._cameras, self._previous = current, set()

    async def _discover_camera(self, camera_id: str, name: str) -> None:
        configs = camera_configs(self._topics, camera_id, name, self._config.api.public_url)
        for topic, payload in configs.items():
            await self._publish(topic, json.dumps(payload))
        new = camera_id not in self._cameras
        self._cameras[camera_id] = name
        if new:
            await self._publish_initial_states(camera_id)
        log.info("homeassistant_camera_discovered", camera=camera_id)

    async def _publish_initial_states(self, camera_id: str) -> None:
        """What the database knows: sensors on for classes seen within clear_seconds, the
        last event's risk, the latest detection's picture."""
        clear = self._config.mqtt.clear_seconds
        try:
            recent = await self._pool.fetch(SELECT_RECENT_CLASSES, camera_id, clear)
            event = await self._pool.fetchrow(SELECT_LAST_EVENT, camera_id)
            latest = await self._pool.fetchval(SELECT_LATEST_DETECTION, camera_id)
        except STORE_ERRORS as err:
            log.warning("homeassistant_states_unread", camera=camera_id,
                        error=str(err) or type(err).__name__)
            return
        now = time.monotonic()
        for row in recent:
            if (group := group_of(row["object_type"])) is not None:
                until = now + clear - float(row["age"])
                key = (camera_id, group)
                self._on_until[key] = max(self._on_until.get(key, 0.0), until)
        for group in OBJECT_GROUPS:
            on = (camera_id, group) in self._on_until
            await self._publish(self._topics.camera(camera_id, group), ON if on else OFF)
        if event is not None:
            await self._publish_risk(camera_id, event["risk_score"], risk_attributes(
                event["id"], event["risk_level"], event["summary"], event["started_at"],
                self._config.api.public_url))
        if latest is not None:
            self._want_image(camera_id, latest)

    async def _remove_camera(self, camera_id: str) -> None:
        """Empty retained configs remove the entities; empty retained states are deleted."""
        for topic in camera_configs(self._topics, camera_id, camera_id):
            await self._publish(topic, b"")
        for topic in camera_state_topics(self._topics, camera_id):
            await self._publish(topic, b"")
        self._cameras.pop(camera_id, None)
        self._images.pop(camera_id, None)
        for key in [k for k in self._on_until if k[0] == camera_id]:
            del self._on_until[key]
        log.info("homeassistant_camera_removed", camera=camera_id)

    # --- Pipeline -----------------------------------------------------------------------

    async def _follow_pipeline(self) -> None:
        """security_events and system_status, resubscribing with backoff when Redis goes.

        Polled with a timeout and a flag, as the WebSocket relay does: redis-py can swallow
        a cancellation that lands inside subscribe(), and the session would never end."""
        backoff = Backoff(RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS)
        channels = {self._keyspace.channel(SECURITY_EVENTS_CHANNEL),
                    self._keyspace.channel(SYSTEM_STATUS_CHANNEL)}
        while not self._session_over.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                backoff.reset()
                while not self._session_over.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=POLL_SECONDS)
                    if message is not None:
                        await self._on_message(message["data"])
            except STORE_ERRORS as err:
                delay = backoff.next_delay()
                log.warning("homeassistant_redis_unavailable", in_s=delay,
                            error=str(err) or type(err).__name__)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(*STORE_ERRORS):
                    await pubsub.aclose()

    async def _on_message(self, raw: bytes | str) -> None:
        try:
            message = decode_message(raw)
        except MalformedItem as err:  # not ours to judge: the relays pass it on as it is
            log.debug("homeassistant_message_ignored", reason=err.reason)
            return
        if isinstance(message, SystemStatusMessage):
            await self._on_status(message.data)
            return
        camera_id = message.data.camera_id
        if camera_id is None:
            return
        if camera_id not in self._cameras:
            await self._sync_cameras()  # a camera the pipeline names before the sync did
            if camera_id not in self._cameras:
                return
        if isinstance(message, DetectionMessage):
            await self._on_detection(camera_id, message.data)
        elif isinstance(message, EventMessage):
            data = message.data
            await self._publish_risk(camera_id, data.risk_score, risk_attributes(
                data.event_id, data.risk_level, data.summary, data.started_at,
                self._config.api.public_url))
        elif isinstance(message, AlertMessage):
            await self._on_alert(camera_id, message.data)

    async def _on_detection(self, camera_id: str, data: DetectionData) -> None:
        if is_backlog(data, self._config.batch.backlog_seconds):  # nobody is there now
            return
        until = time.monotonic() + self._config.mqtt.clear_seconds
        for group in {group_of(d.object_type) for d in data.detections} - {None}:
            assert group is not None
            was_on = (camera_id, group) in self._on_until
            self._on_until[(camera_id, group)] = until
            if not was_on:
                await self._publish(self._topics.camera(camera_id, group), ON)
        if data.detections:
            self._want_image(camera_id, data.detections[0].id)

    async def _publish_risk(self, camera_id: str, risk_score: int | None,
                            attributes: dict[str, Any]) -> None:
        await self._publish(self._topics.camera(camera_id, "risk"), str(risk_score))
        await self._publish(self._topics.camera(camera_id, "risk/attributes"),
                            json.dumps(attributes))

    async def _on_alert(self, camera_id: str, data: AlertData) -> None:
        # Not retained: an event fires once, and a retained one would fire again on restart.
        await self._publish(self._topics.camera(camera_id, "alert"), json.dumps(
            alert_event(data, self._config.api.public_url)), retain=False)

    async def _on_status(self, data: SystemStatusData) -> None:
        for key, value in hub_values(data).items():
            if self._hub.get(key) != value:
                self._hub[key] = value
                await self._publish(self._topics.hub(key), value)

    # --- Time and pictures --------------------------------------------------------------

    async def _keep(self) -> None:
        """Turn sensors off when their time is up; sync cameras now and then (at once when
        Home Assistant asks); say "online" now and then."""
        next_sync = time.monotonic() + CAMERA_SYNC_SECONDS
        next_online = time.monotonic() + ONLINE_REFRESH_SECONDS
        while not self._session_over.is_set():
            now = time.monotonic()
            for key in [k for k, until in self._on_until.items() if until <= now]:
                del self._on_until[key]
                await self._publish(self._topics.camera(*key), OFF)
            if self._rediscover.is_set():
                self._rediscover.clear()
                await self._publish_hub_discovery()
                await self._sync_cameras(force=True)
            elif now >= next_sync:
                await self._sync_cameras()
                next_sync = now + CAMERA_SYNC_SECONDS
            if now >= next_online:
                await self._publish(self._topics.availability, ONLINE)
                next_online = now + ONLINE_REFRESH_SECONDS
            wake = min([next_sync, next_online, *self._on_until.values()])
            await pause(self._rediscover, max(0.05, min(wake - time.monotonic(),
                                                             POLL_SECONDS)))

    def _want_image(self, camera_id: str, detection_id: int) -> None:
        """Ask for the camera's picture; a newer detection replaces one not yet rendered."""
        self._images[camera_id] = detection_id
        self._image_due.set()

    async def _render_images(self) -> None:
        width = self._config.alerts.image_width
        while True:
            await self._image_due.wait()
            self._image_due.clear()
            while self._images:
                camera_id, detection_id = self._images.popitem()
                try:
                    picture = await self._evidence.detection_picture(detection_id, width)
                except NotFound as err:
                    log.info("homeassistant_picture_missing", camera=camera_id,
                             detection_id=detection_id, reason=str(err))
                    continue
                except STORE_ERRORS as err:
                    log.warning("homeassistant_picture_unread", camera=camera_id,
                                error=str(err) or type(err).__name__)
                    continue
                if camera_id in self._cameras:
                    await self._publish(self._topics.camera(camera_id, "snapshot"), picture.jpeg)

    async def _wait(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

