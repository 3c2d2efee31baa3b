"""Tests for hsid/analysis/calibration.py: suggestions from review feedback."""

from __future__ import annotations

from hsid.analysis.calibration import LevelFeedback, suggestions
from hsid.core.config import AnalyzerConfig


def level(camera: str, risk_level: str, feedback: int, dismissed: int) -> LevelFeedback:
    return LevelFeedback(camera.lower(), camera, risk_level, feedback, feedback, dismissed,
                         feedback - dismissed)


def test_one_noisy_camera_gets_a_camera_side_suggestion() -> None:
    rows = [level("Street", "high", 10, 8), level("Front Door", "high", 10, 1),
            level("Garage", "high", 10, 2)]
    [text] = suggestions(rows, AnalyzerConfig())
    assert text.startswith("Street: 8 of 10 high events were dismissed") and "zone" in text


def test_a_level_dismissed_on_most_cameras_suggests_raising_its_threshold() -> None:
    rows = [level("Street", "critical", 6, 5), level("Front Door", "critical", 8, 6)]
    [text] = suggestions(rows, AnalyzerConfig(risk_critical=85))
    assert "raising [analyzer] risk_critical from 85 to 90" in text


def test_too_little_feedback_suggests_nothing() -> None:
    assert suggestions([level("Street", "high", 4, 4)], AnalyzerConfig()) == []
