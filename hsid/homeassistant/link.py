"""The MQTT connection to Home Assistant's broker: a last will that says hsid is offline,
"online" once connected, and publishing for the states and (lent) the MQTT alert channel.

The broker sends the will when the connection dies without a goodbye (kill -9, a power cut,
a network gone), so Home Assistant shows hsid's entities unavailable. A clean stop publishes
"offline" itself, since a clean disconnect discards the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import aiomqtt

from hsid.core.config import MqttConfig
from hsid.core.errors import TransientError
from hsid.homeassistant.discovery import OFFLINE, ONLINE, Topics

MQTT_TIMEOUT_SECONDS = 10.0  # connect, and each publish at QoS 1 (until the broker's PUBACK)
KEEPALIVE_SECONDS = 30  # the broker gives up on a silent hsid (and sends the will) after 1.5x
GOODBYE_TIMEOUT_SECONDS = 3.0  # the "offline" of a clean stop must not hold the stop up
MQTT_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)


class MqttLink:
    """One MQTT connection at a time, opened by `connect` (Home Assistant's publisher) and
    usable by anyone in the process through `publish` while it is up."""

    def __init__(self, config: MqttConfig) -> None:
        self.url = config.url
        self._topics = Topics(config)
        self._client: aiomqtt.Client | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    @contextlib.asynccontextmanager
    async def connect(self, *, goodbye: asyncio.Event) -> AsyncIterator[aiomqtt.Client]:
        """Connect with the will, announce "online" (retained), and yield the client. On
        leaving, "offline" is published first if `goodbye` is set (hsid is stopping); else
        the connection just ends, as when the duty passes to another process. Raises the
        MQTT_ERRORS of a broker that can't be reached."""
        broker = urlsplit(self.url)  # its shape is checked by config.py
        tls = await asyncio.to_thread(ssl.create_default_context) if (
            broker.scheme == "mqtts") else None  # loading the CA certificates blocks
        will = aiomqtt.Will(self._topics.availability, OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(
            broker.hostname or "", broker.port or (1883 if tls is None else 8883),
            username=None if broker.username is None else unquote(broker.username),
            password=None if broker.password is None else unquote(broker.password),
            tls_context=tls, will=will, keepalive=KEEPALIVE_SECONDS,
            timeout=MQTT_TIMEOUT_SECONDS)
        async with client:
            await client.publish(self._topics.availability, ONLINE, qos=1, retain=True)
            self._client = client
            try:
                yield client
            finally:
                self._client = None
                if goodbye.is_set():
                    with contextlib.suppress(*MQTT_ERRORS):
                        await asyncio.shield(asyncio.wait_for(client.publish(
                            self._topics.availability, OFFLINE, qos=1, retain=True),
                            GOODBYE_TIMEOUT_SECONDS))

    async def publish(self, topic: str, payload: bytes | str, *, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish on the open connection; TransientError when there is none or it fails."""
        client = self._client
        if client is None:
            raise TransientError("not connected to the MQTT broker")
        try:
            async with asyncio.timeout(MQTT_TIMEOUT_SECONDS):
                await client.publish(topic, payload, qos=qos, retain=retain)
        except MQTT_ERRORS as err:
            raise TransientError(f"MQTT broker {urlsplit(self.url).hostname}: "
                                 f"{str(err) or type(err).__name__}") from err
