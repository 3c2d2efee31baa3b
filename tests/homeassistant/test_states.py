"""States read from the pipeline's messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hsid.homeassistant.states import alert_event, hub_values, is_backlog, risk_attributes


def test_a_process_without_a_detector_leaves_the_detector_sensors_alone() -> None:
    """Scaled out, each process publishes its own status: the API box knows the queues,
    the GPU box its detector."""
    assert hub_values({"health": "healthy", "queues": {"detection_queue": 4},
                       "detector": None, "inference_fps": None}) == {
        "health": "healthy", "queue_depth": "4"}
    assert hub_values({"queues": {}, "detector": {"provider": "TensorrtExecutionProvider"},
                       "inference_fps": 41.234}) == {
        "detector_provider": "TensorrtExecutionProvider", "inference_rate": "41.23"}


def test_a_backlog_is_told_by_how_late_the_snapshot_arrived() -> None:
    now = datetime.now(UTC)
    late = {"detected_at": now.isoformat(), "captured_at": (now - timedelta(minutes=6)).isoformat()}
    live = {"detected_at": now.isoformat(), "captured_at": (now - timedelta(seconds=3)).isoformat()}
    assert is_backlog(late, 300) and not is_backlog(live, 300)
    assert not is_backlog({"detected_at": now.isoformat(), "captured_at": None}, 300)


def test_risk_and_alert_payloads_link_the_snapshot() -> None:
    started = datetime(2026, 11, 26, 2, 14, 9, tzinfo=UTC)
    risk = risk_attributes({"event_id": 9, "risk_level": "high", "summary": "s",
                            "started_at": started}, "https://hsid.example.net")
    assert risk == {"risk_level": "high", "summary": "s", "started_at": started.isoformat(),
                    "event_id": 9,
                    "snapshot_url": "https://hsid.example.net/api/events/9/snapshot"}
    fired = alert_event({"id": "a", "event_id": None, "severity": "low"}, "")
    assert fired["event_type"] == "alert" and fired["snapshot_url"] is None
