"""Apprise pushes against a local HTTP receiver (Apprise's json:// URL): what arrives."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from hsid.alerts.push import PushMessage, compose, send_push, target_key
from hsid.core.errors import PermanentError, TransientError
from hsid.imaging.annotate import sample_picture
from tests.alerts.receivers import Receiver


def apprise_url(receiver: Receiver, secret: str = "") -> str:
    """Apprise's JSON service, pointed at the receiver; `secret` rides in the query."""
    url = receiver.url.replace("http://", "json://", 1)
    return f"{url}?-token={secret}" if secret else url


async def push(urls: list[str], message: PushMessage, sent: list[str] | None = None) -> None:
    await asyncio.to_thread(send_push, urls, message, [] if sent is None else sent)


async def test_the_picture_arrives_and_decodes(receiver: Receiver) -> None:
    message = PushMessage("Front door: high risk, person", "A person at the door", "high",
                          sample_picture(640), "hsid-event-7.jpg")

    await push([apprise_url(receiver)], message)

    [request] = receiver.requests
    body = json.loads(request.body)
    assert (body["title"], body["message"]) == ("Front door: high risk, person",
                                                "A person at the door")
    [attachment] = body["attachments"]
    assert (attachment["filename"], attachment["mimetype"]) == ("hsid-event-7.jpg",
                                                                "image/jpeg")
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(attachment["base64"]), np.uint8),
                          cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape == (360, 640, 3)


async def test_a_retry_reaches_only_the_urls_that_failed(receiver: Receiver) -> None:
    first, second = apprise_url(receiver, "one"), apprise_url(receiver, "two")
    receiver.statuses = [200, 503]  # the first takes it, the second is down
    sent: list[str] = []

    with pytest.raises(TransientError, match=r"apprise_urls\[1\]"):
        await push([first, second], PushMessage("t", "b"), sent)
    assert sent == [target_key(first)]

    await push([first, second], PushMessage("t", "b"), sent)  # the notifier's retry

    assert len(receiver.requests) == 3, "the first URL was not sent to twice"
    assert sent == [target_key(first), target_key(second)]


async def test_errors_name_the_url_by_place_and_scheme_never_its_secrets(
    receiver: Receiver
) -> None:
    receiver.status = 500
    secret = "s3cr3t-topic-name"

    with pytest.raises(TransientError) as failed:
        await push([apprise_url(receiver, secret)], PushMessage("t", "b"))

    assert "alerts.apprise_urls[0] (json://***)" in str(failed.value)
    assert secret not in str(failed.value) and "127.0.0.1" not in str(failed.value)


async def test_a_url_apprise_does_not_know_fails_for_good() -> None:
    with pytest.raises(PermanentError, match=r"apprise_urls\[0\] \(nosuch://\*\*\*\) is not"):
        await push(["nosuch://secret"], PushMessage("t", "b"))


def test_the_message_names_camera_risk_and_object_and_links_the_event() -> None:
    data = {"event_id": 7, "camera_id": "front_door", "camera_name": "Front door",
            "risk_level": "high", "summary": "A person at the door at night",
            "started_at": datetime(2026, 11, 26, 22, 5, 9, tzinfo=UTC).isoformat()}

    title, body = compose(data, "person", ZoneInfo("Europe/Berlin"), "https://hsid.example.net/")

    assert title == "Front door: high risk, person"
    assert body.splitlines() == ["A person at the door at night",
                                 "Thu 26 Nov 2026, 23:05:09 CET",
                                 "https://hsid.example.net/api/events/7"]
    assert compose({**data, "camera_name": None}, None, UTC, "")[0] == "front_door: high risk"
