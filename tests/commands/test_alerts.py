"""`hsid alerts test`: a test alert on each channel, and a line saying what each did."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiomqtt
import pytest

from hsid.commands.alerts import TEST_CAMERA, alerts_command
from hsid.core.config import AlertsConfig
from hsid.core.errors import InvalidInput
from tests.alerts.receivers import MQTT_HOST, MQTT_PORT, Receiver, needs_broker
from tests.imaging.pictures import decoded


async def _run(config: AlertsConfig, *channels: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = await alerts_command(config, "test", list(channels), out)
    return code, out.getvalue().splitlines()


async def test_only_configured_channels_are_tried_by_default(receiver: Receiver) -> None:
    assert await _run(AlertsConfig()) == (0, ["log: delivered"])

    code, lines = await _run(AlertsConfig(webhook_url=receiver.url))

    assert (code, lines) == (0, ["log: delivered", "webhook: delivered"])
    [request] = receiver.requests
    body = json.loads(request.body)
    assert body["type"] == "alert" and body["data"]["test"] is True
    assert body["data"]["camera_id"] == TEST_CAMERA


async def test_failures_are_reported_once_without_retries(receiver: Receiver) -> None:
    receiver.status = 503
    code, lines = await _run(AlertsConfig(webhook_url=receiver.url), "webhook", "mqtt", "log")

    assert code == 1
    assert lines == ["webhook: FAILED: webhook answered HTTP 503",
                     "mqtt: FAILED: alerts.mqtt_url is not set", "log: delivered"]
    assert len(receiver.requests) == 1


async def test_unknown_channel_is_refused_before_sending(receiver: Receiver) -> None:
    with pytest.raises(InvalidInput, match="unknown channel sms"):
        await _run(AlertsConfig(webhook_url=receiver.url), "webhook", "sms")
    assert receiver.requests == []


@needs_broker
async def test_mqtt_test_alert_reaches_a_subscriber() -> None:
    topic = f"hsid-test/{uuid.uuid4().hex}"
    config = AlertsConfig(mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", mqtt_topic=topic)
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as subscriber:
        await subscriber.subscribe(f"{topic}/#", qos=1)
        assert await _run(config, "mqtt") == (0, ["mqtt: delivered"])
        message = await asyncio.wait_for(anext(aiter(subscriber.messages)), 10)
    assert str(message.topic) == f"{topic}/{TEST_CAMERA}"
    assert json.loads(message.payload)["data"]["test"] is True


def test_the_command_line_exits_non_zero_when_a_channel_fails() -> None:
    env = {**os.environ, "HSID_ALERTS__WEBHOOK_URL": "http://127.0.0.1:9/hook"}  # discard port
    done = subprocess.run([sys.executable, "-m", "hsid", "alerts", "test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == "log: delivered"
    assert done.stdout.splitlines()[1].startswith("webhook: FAILED: webhook unreachable")


async def test_apprise_test_alert_sends_a_test_picture(receiver: Receiver) -> None:
    config = AlertsConfig(apprise_urls=(receiver.url.replace("http://", "json://", 1),),
                          image_width=640)

    assert await _run(config) == (0, ["log: delivered", "apprise: delivered"])

    body = json.loads(receiver.requests[0].body)
    assert body["title"] == "hsid test: low risk, person"
    assert body["message"].startswith("Test alert from hsid: this channel works.")
    [attachment] = body["attachments"]
    assert decoded(base64.b64decode(attachment["base64"])).shape == (360, 640, 3)


def test_the_command_line_tests_apprise_and_mqtt_through_the_mqtt_section(
    tmp_path: Path,
) -> None:
    """`hsid alerts test` with only [mqtt] url set: the mqtt channel uses that broker; a bad
    Apprise URL is reported without its secret."""
    env = {**os.environ, "HSID_MQTT__URL": "mqtt://127.0.0.1:9",
           "HSID_ALERTS__APPRISE_URLS": "nosuch://very-secret-token"}
    done = subprocess.run([sys.executable, "-m", "hsid", "alerts", "test"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("mqtt: FAILED: MQTT broker 127.0.0.1")
    assert lines[2] == ("apprise: FAILED: alerts.apprise_urls[0] (nosuch://***) is not a URL "
                        "Apprise knows")
    assert "very-secret-token" not in done.stdout + done.stderr
