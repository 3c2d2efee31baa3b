"""Alert channels: the ways an alert leaves hsid (the journal, a webhook, MQTT, Apprise).

`send` says how a failure should be treated by its type: TransientError (timeout, connection
error, HTTP 408/429/5xx, broker down) is worth retrying, PermanentError (another HTTP status,
an unset URL, an unknown channel) is not. The notifier retries; `hsid alerts test` reports.

The webhook and MQTT bodies carry links to the event's annotated snapshot and its telling
detection's thumbnail, under `[api] public_url`; Apprise sends the snapshot itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
from collections.abc import Mapping
from datetime import tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiohttp
import aiomqtt
import structlog

from hsid.core.config import ALERT_CHANNELS, AlertsConfig
from hsid.core.errors import STORE_ERRORS, NotFound, PermanentError, TransientError
from hsid.imaging.annotate import sample_picture
from hsid.imaging.evidence import picture_links

if TYPE_CHECKING:
    from hsid.homeassistant.link import MqttLink
    from hsid.imaging.evidence import Evidence

log = structlog.get_logger(__name__)

MQTT_TIMEOUT_SECONDS = 10.0  # connect, publish (QoS 1: until the broker's PUBACK), disconnect
SIGNATURE_HEADER = "X-Hsid-Signature"
RETRYABLE_HTTP = frozenset({408, 429})  # plus every 5xx
PAYLOAD_FIELDS = ("rule_name", "camera_id", "camera_name", "risk_score", "risk_level",
                  "summary", "started_at")  # taken from the alert's metadata; None where missing
LINKS_CACHED = 256  # alerts whose links are kept, so an alert's channels look them up once


def configured_channels(config: AlertsConfig) -> list[str]:
    """The channels that can work as configured: the journal always, the others once set."""
    urls = {"webhook": config.webhook_url, "mqtt": config.mqtt_url,
            "apprise": bool(config.apprise_urls)}
    return [channel for channel in ALERT_CHANNELS if channel == "log" or urls[channel]]


def alert_data(row: Mapping[str, Any]) -> dict[str, Any]:
    """An alerts row as the payload's "data": the one shape that webhooks, MQTT and the
    WebSocket all get."""
    meta = row["metadata"] if isinstance(row["metadata"], dict) else {}
    return {"id": str(row["id"]), "event_id": row["event_id"],
            "rule_id": None if row["rule_id"] is None else str(row["rule_id"]),
            "severity": row["severity"], "created_at": row["created_at"].isoformat(),
            "dedup_key": row["dedup_key"], **{k: meta.get(k) for k in PAYLOAD_FIELDS}}


def alert_body(data: dict[str, Any]) -> bytes:
    """The JSON sent to the webhook and MQTT: the exact bytes that are signed."""
    return json.dumps({"type": "alert", "data": data}, separators=(",", ":")).encode()


class AlertChannels:
    """Sends an alert's data to one channel at a time; an async context manager, as the
    webhook uses one HTTP session for as long as the channels are open.

    `evidence` finds an event's picture (without it: links without a thumbnail, Apprise
    without a picture); `zone` is the site's, for the time in a push message; `link` is
    Home Assistant's MQTT connection, used for MQTT alerts to the same broker.
    """

    def __init__(self, config: AlertsConfig, *, evidence: Evidence | None = None,
                 public_url: str = "", zone: tzinfo | None = None,
                 link: MqttLink | None = None) -> None:
        self._config = config
        self._evidence, self._public_url, self._zone = evidence, public_url, zone
        self._link = link
        self._session: aiohttp.ClientSession | None = None
        self._links: dict[str, dict[str, str | None]] = {}

    async def __aenter__(self) -> AlertChannels:
        timeout = aiohttp.ClientTimeout(total=self._config.webhook_timeout_seconds)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, channel: str, data: dict[str, Any],
                   sent: list[str] | None = None) -> None:
        """Deliver `data` (the payload's "data") on `channel`, or raise why not. `sent`
        holds the keys of the Apprise URLs that took it on an earlier try (they are not
        sent to again); the keys of those that take it now are appended."""
        if channel == "log":
            log.warning("alert", **data)  # the journal: always there, always delivered
        elif channel == "webhook":
            await self._send_webhook(alert_body({**data, **await self._links_of(data)}))
        elif channel == "mqtt":
            await self._send_mqtt(alert_body({**data, **await self._links_of(data)}),
                                  data.get("camera_id"))
        elif channel == "apprise":
            await self._send_apprise(data, [] if sent is None else sent)
        else:
            raise PermanentError(
                f"unknown channel {channel!r}: expected one of {', '.join(ALERT_CHANNELS)}")

    async def _send_webhook(self, body: bytes) -> None:
        url = self._config.webhook_url
        if not url:
            raise PermanentError("alerts.webhook_url is not set")
        assert self._session is not None, "open the channels with `async with`"
        headers = {"Content-Type": "application/json"}
        if key := self._config.webhook_hmac_key:
            signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={signature}"
        try:
            # No redirects: a signed alert goes where the operator said, or fails visibly.
            async with self._session.post(url, data=body, headers=headers,
                                          allow_redirects=False) as response:
                status = response.status
        except aiohttp.InvalidURL as err:
            raise PermanentError(f"alerts.webhook_url is not a valid URL: {err}") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(f"webhook unreachable: {str(err) or type(err).__name__}") from err
        if 200 <= status < 300:
            return
        if status in RETRYABLE_HTTP or status >= 500:
            raise TransientError(f"webhook answered HTTP {status}")
        raise PermanentError(f"webhook answered HTTP {status}")

    async def _links_of(self, data: dict[str, Any]) -> dict[str, str | None]:
        """The alert's picture links, looked up once per alert (its channels share them)."""
        key = str(data.get("id"))
        if key not in self._links:
            event_id = data.get("event_id")
            detection = None
            if self._evidence is not None and event_id is not None:
                try:
                    detection = await self._evidence.telling_detection(event_id)
                except STORE_ERRORS as err:
                    raise TransientError(f"the event's pictures can't be looked up: "
                                         f"{str(err) or type(err).__name__}") from err
            thumbnail = detection["id"] if detection and detection["thumbnail_path"] else None
            if len(self._links) >= LINKS_CACHED:
                self._links.clear()
            self._links[key] = picture_links(self._public_url, event_id, thumbnail)
        return self._links[key]

    async def _send_apprise(self, data: dict[str, Any], sent: list[str]) -> None:
        from hsid.alerts.push import PushMessage, compose, send_push  # loads Apprise

        if not self._config.apprise_urls:
            raise PermanentError("alerts.apprise_urls is empty")
        picture, object_type = await self._picture(data)
        title, body = compose(data, object_type, self._zone, self._public_url)
        message = PushMessage(title, body, str(data.get("severity") or "low"), picture,
                              f"hsid-event-{data.get('event_id') or 'test'}.jpg")
        await asyncio.to_thread(send_push, self._config.apprise_urls, message, sent)

    async def _picture(self, data: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """The alert's annotated snapshot and the class it shows; (None, None) when there
        is none to send (the message goes without: a picture lost is no reason to stay
        silent)."""
        width = self._config.image_width
        if data.get("test"):
            return await asyncio.to_thread(sample_picture, width), "person"
        if self._evidence is None or data.get("event_id") is None:
            return None, None
        try:
            picture = await self._evidence.event_picture(data["event_id"], width)
        except NotFound as err:
            log.info("alert_picture_missing", alert_id=data.get("id"), reason=str(err))
            return None, None
        except STORE_ERRORS as err:
            raise TransientError(f"the event's picture can't be looked up: "
                                 f"{str(err) or type(err).__name__}") from err
        return picture.jpeg, picture.detection["object_type"]

    async def _send_mqtt(self, body: bytes, camera: str | None) -> None:
        """Through Home Assistant's connection when it is to the same broker and up; else
        connect, publish at QoS 1, disconnect: alerts are rare, and a long-lived connection
        of the channel's own would be one more thing to watch over."""
        if not self._config.mqtt_url:
            raise PermanentError("alerts.mqtt_url is not set")
        # Without a camera, the bare topic: a subscriber to "<topic>/#" still receives it.
        topic = self._config.mqtt_topic if camera is None else f"{self._config.mqtt_topic}/{camera}"
        link = self._link
        if link is not None and link.url == self._config.mqtt_url and link.connected:
            await link.publish(topic, body, qos=1)
            return
        broker = urlsplit(self._config.mqtt_url)  # its shape is checked by config.py
        tls = await asyncio.to_thread(ssl.create_default_context) if (
            broker.scheme == "mqtts") else None  # loading the CA certificates blocks
        try:
            async with asyncio.timeout(MQTT_TIMEOUT_SECONDS), aiomqtt.Client(
                    broker.hostname or "", broker.port or (1883 if tls is None else 8883),
                    username=None if broker.username is None else unquote(broker.username),
                    password=None if broker.password is None else unquote(broker.password),
                    tls_context=tls,
                    timeout=MQTT_TIMEOUT_SECONDS) as client:
                await client.publish(topic, body, qos=1, retain=False)
        except (aiomqtt.MqttError, OSError, TimeoutError) as err:
            raise TransientError(f"MQTT broker {broker.hostname}: "
                                 f"{str(err) or type(err).__name__}") from err
