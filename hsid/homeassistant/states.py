"""States: what each of Home Assistant's state topics carries, read from the pipeline's
messages (`security_events`, `system_status`). Pure functions; the publisher sends them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hsid.homeassistant.discovery import EVENT_TYPE
from hsid.imaging.evidence import picture_links


def is_backlog(data: dict[str, Any], backlog_seconds: float) -> bool:
    """A detection message of a snapshot captured well before it arrived (an upload after
    an outage), as the batcher tells a backlog: history, not someone there now."""
    try:
        detected = datetime.fromisoformat(data["detected_at"])
        captured = datetime.fromisoformat(data["captured_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return (detected - captured).total_seconds() > backlog_seconds


def risk_attributes(data: dict[str, Any], public_url: str) -> dict[str, Any]:
    """The risk sensor's attributes from an event message (or an events row)."""
    started = data.get("started_at")
    if isinstance(started, datetime):
        started = started.isoformat()
    event_id = data.get("event_id")
    return {"risk_level": data.get("risk_level"), "summary": data.get("summary"),
            "started_at": started, "event_id": event_id,
            "snapshot_url": picture_links(public_url, event_id, None)["snapshot_url"]}


def alert_event(data: dict[str, Any], public_url: str) -> dict[str, Any]:
    """The event entity's payload from an alert message: `event_type` and attributes."""
    return {"event_type": EVENT_TYPE, "alert_id": data.get("id"),
            "event_id": data.get("event_id"), "severity": data.get("severity"),
            "rule_name": data.get("rule_name"), "risk_score": data.get("risk_score"),
            "risk_level": data.get("risk_level"), "summary": data.get("summary"),
            "started_at": data.get("started_at"),
            "snapshot_url": picture_links(public_url, data.get("event_id"), None)[
                "snapshot_url"]}


def hub_values(data: dict[str, Any]) -> dict[str, str]:
    """The hub sensors' states a system_status message knows. Each process publishes its
    own: what one does not know (a detector it does not run) is left out, so the last
    known value stays."""
    values: dict[str, str] = {}
    queues = data.get("queues")
    if isinstance(queues, dict) and queues:
        values["queue_depth"] = str(sum(v for v in queues.values() if isinstance(v, int)))
    detector = data.get("detector")
    if isinstance(detector, dict) and detector.get("provider"):
        values["detector_provider"] = str(detector["provider"])
    if isinstance(data.get("inference_fps"), int | float):
        values["inference_rate"] = f"{data['inference_fps']:.2f}"
    if isinstance(data.get("health"), str):
        values["health"] = data["health"]
    return values
