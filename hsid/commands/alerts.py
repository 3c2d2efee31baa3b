"""`hsid alerts test`: send a test alert through the channels and say what each did, so
notifications are known to work before a real alert depends on them. Apprise gets a test
picture (a made-up snapshot with one person drawn), as a real alert carries its snapshot."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, tzinfo
from typing import Any, TextIO

from hsid.alerts.channels import AlertChannels, alert_data, configured_channels
from hsid.core.config import ALERT_CHANNELS, AlertsConfig
from hsid.core.errors import InvalidInput, PermanentError, TransientError

ALERTS_ACTIONS = ("test",)
TEST_CAMERA = "hsid_test"  # MQTT: published to <mqtt_topic>/hsid_test


def test_alert_data() -> dict[str, Any]:
    """An alert's payload data, marked `"test": true`, with no event or rule behind it."""
    now = datetime.now(UTC)
    row = {"id": f"test-{uuid.uuid4()}", "event_id": None, "rule_id": None, "severity": "low",
           "created_at": now, "dedup_key": "hsid:test", "metadata": {
               "rule_name": "hsid alerts test", "camera_id": TEST_CAMERA,
               "camera_name": "hsid test", "risk_score": 0, "risk_level": "low",
               "summary": "Test alert from hsid: this channel works.",
               "started_at": now.isoformat()}}
    return {**alert_data(row), "test": True}


async def alerts_command(config: AlertsConfig, action: str, channels: list[str],
                         out: TextIO, *, public_url: str = "", zone: tzinfo | None = None) -> int:
    """Send one test alert on each of `channels` (default: those configured), once, without
    retries; one line per channel. Returns 0 when every channel delivered, 1 otherwise.
    `public_url` and `zone` are [api] public_url and the site's zone, as in real alerts."""
    if action not in ALERTS_ACTIONS:
        raise InvalidInput(f"unknown alerts action {action!r}; choose from "
                           f"{', '.join(ALERTS_ACTIONS)}")
    if unknown := [c for c in channels if c not in ALERT_CHANNELS]:
        raise InvalidInput(f"unknown channel {', '.join(unknown)}; choose from "
                           f"{', '.join(ALERT_CHANNELS)}", field="channels")
    data = test_alert_data()
    failed = False
    async with AlertChannels(config, public_url=public_url, zone=zone) as sender:
        for channel in channels or configured_channels(config):
            try:
                await sender.send(channel, data)
            except (TransientError, PermanentError) as err:
                failed = True
                print(f"{channel}: FAILED: {err}", file=out)
            else:
                print(f"{channel}: delivered", file=out)
    return 1 if failed else 0
