"""States: what each of Home Assistant's state topics carries, read from the pipeline's
typed messages (`security_events`, `system_status`; core/messages.py). Pure functions; the
publisher sends them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hsid.core.messages import AlertData, DetectionData, SystemStatusData
from hsid.homeassistant.discovery import EVENT_TYPE
from hsid.imaging.evidence import picture_links


def is_backlog(data: DetectionData, backlog_seconds: float) -> bool:
    """A detection message of a snapshot captured well before it arrived (an upload after
    an outage), as the batcher tells a backlog: history, not someone there now."""
    if data.captured_at is None:
        return False
    return (data.detected_at - data.captured_at).total_seconds() > backlog_seconds


def risk_attributes(event_id: int, risk_level: str | None, summary: str | None,
                    started_at: datetime | None, public_url: str) -> dict[str, Any]:
    """The risk sensor's attributes of an event (from its message, or its row)."""
    return {"risk_level": risk_level, "summary": summary,
            "started_at": started_at.isoformat() if started_at is not None else None,
            "event_id": event_id,
            "snapshot_url": picture_links(public_url, event_id, None)["snapshot_url"]}


def alert_event(data: AlertData, public_url: str) -> dict[str, Any]:
    """The event entity's payload from an alert message: `event_type` and attributes."""
    return {"event_type": EVENT_TYPE, "alert_id": data.id, "event_id": data.event_id,
            "severity": data.severity, "rule_name": data.rule_name,
            "risk_score": data.risk_score, "risk_level": data.risk_level,
            "summary": data.summary, "started_at": data.started_at,
            "snapshot_url": picture_links(public_url, data.event_id, None)["snapshot_url"]}


def hub_values(data: SystemStatusData) -> dict[str, str]:
    """The hub sensors' states a system_status message knows. Each process publishes its
    own: what one does not know (a detector it does not run) is left out, so the last
    known value stays."""
    values: dict[str, str] = {"health": data.health}
    if data.queues:
        values["queue_depth"] = str(sum(data.queues.values()))
    if isinstance(data.detector, dict) and data.detector.get("provider"):
        values["detector_provider"] = str(data.detector["provider"])
    if data.inference_fps is not None:
        values["inference_rate"] = f"{data.inference_fps:.2f}"
    return values
