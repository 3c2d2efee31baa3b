"""States read from the pipeline's typed messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hsid.core.messages import AlertData, DetectionData, SystemStatusData
from hsid.homeassistant.states import alert_event, hub_values, is_backlog, risk_attributes


def status(**facts: Any) -> SystemStatusData:
    return SystemStatusData(health="healthy", database={}, redis={}, stages={},
                            queues=facts.pop("queues", {}), dlq={}, uptime_seconds=5,
                            timestamp="2026-11-26T02:14:09.000Z", **facts)


def test_a_process_without_a_detector_leaves_the_detector_sensors_alone() -> None:
    """Scaled out, each process publishes its own status: the API box knows the queues,
    the GPU box its detector."""
    assert hub_values(status(queues={"detection_queue": 4})) == {
        "health": "healthy", "queue_depth": "4"}
    assert hub_values(status(detector={"provider": "TensorrtExecutionProvider"},
                             inference_fps=41.234)) == {
        "health": "healthy", "detector_provider": "TensorrtExecutionProvider",
        "inference_rate": "41.23"}


def test_a_backlog_is_told_by_how_late_the_snapshot_arrived() -> None:
    now = datetime.now(UTC)

    def detection(captured_at: datetime | None) -> DetectionData:
        return DetectionData(camera_id="porch", file_path="/x.jpg", detected_at=now,
                             captured_at=captured_at, detections=[])

    assert is_backlog(detection(now - timedelta(minutes=6)), 300)
    assert not is_backlog(detection(now - timedelta(seconds=3)), 300)
    assert not is_backlog(detection(None), 300)


def test_risk_and_alert_payloads_link_the_snapshot() -> None:
    started = datetime(2026, 11, 26, 2, 14, 9, tzinfo=UTC)
    risk = risk_attributes(9, "high", "s", started, "https://hsid.example.net")
    assert risk == {"risk_level": "high", "summary": "s", "started_at": started.isoformat(),
                    "event_id": 9,
                    "snapshot_url": "https://hsid.example.net/api/events/9/snapshot"}
    fired = alert_event(AlertData(id="a", event_id=9, rule_id=None, severity="low",
                                  created_at=started.isoformat(), dedup_key="k"), "")
    assert fired["event_type"] == "alert" and fired["alert_id"] == "a"
    assert fired["snapshot_url"] == "/api/events/9/snapshot"
