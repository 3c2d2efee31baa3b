"""Review feedback as calibration: how often people dismissed events, per camera and risk level,
and the band or rule changes that feedback suggests.

An event counts as dismissed when one of its alerts was dismissed and none acknowledged;
as confirmed when one was acknowledged. Feedback is any of these, or the event marked
reviewed. A level whose events are mostly dismissed is scored too high for that household:
the report suggests raising that level's threshold (`[analyzer] risk_<level>`) when it
happens on most cameras, and a camera-side change (a zone, a trusted entity, an alert rule)
when it is one camera's doing. Figures only; nothing is changed automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from hsid.core.config import AnalyzerConfig

# Below this many events with feedback a rate says nothing; no suggestion is made.
MIN_FEEDBACK = 5
# A level's dismissal rate at or above this suggests it is scored too high.
DISMISS_RATE_HIGH = 0.5
THRESHOLD_STEP = 5  # points a suggested threshold moves

SELECT_FEEDBACK = """
SELECT e.camera_id, coalesce(c.name, e.camera_id) AS camera, e.risk_level,
       count(*) AS events,
       count(*) FILTER (WHERE e.reviewed OR a.dismissed OR a.acknowledged) AS feedback,
       count(*) FILTER (WHERE a.dismissed AND NOT a.acknowledged) AS dismissed,
       count(*) FILTER (WHERE a.acknowledged) AS confirmed
FROM events e
LEFT JOIN cameras c ON c.id = e.camera_id
LEFT JOIN LATERAL (
    SELECT coalesce(bool_or(status = 'dismissed'), false) AS dismissed,
           coalesce(bool_or(status = 'acknowledged'), false) AS acknowledged
    FROM alerts WHERE event_id = e.id) a ON true
WHERE e.started_at >= now() - make_interval(days => $1) AND e.risk_level IS NOT NULL
GROUP BY e.camera_id, c.name, e.risk_level
ORDER BY camera, e.risk_level
"""

LEVEL_KEYS = {"medium": "risk_medium", "high": "risk_high", "critical": "risk_critical"}


@dataclass(frozen=True, slots=True)
class LevelFeedback:
    """One camera's events of one risk level and what people made of them."""

    camera_id: str
    camera: str
    risk_level: str
    events: int
    feedback: int
    dismissed: int
    confirmed: int

    @property
    def dismissal_rate(self) -> float | None:
        return self.dismissed / self.feedback if self.feedback else None


async def calibration_report(pool: asyncpg.Pool, config: AnalyzerConfig,
                             days: int) -> dict[str, Any]:
    """The feedback of the last `days` days, per camera and level, with suggestions."""
    rows = [LevelFeedback(**dict(row)) for row in await pool.fetch(SELECT_FEEDBACK, days)]
    return {
        "days": days,
        "thresholds": {key: getattr(config, key) for key in LEVEL_KEYS.values()},
        "cameras": [{"camera_id": r.camera_id, "camera": r.camera, "risk_level": r.risk_level,
                     "events": r.events, "feedback": r.feedback, "dismissed": r.dismissed,
                     "confirmed": r.confirmed, "dismissal_rate": _rounded(r.dismissal_rate)}
                    for r in rows],
        "suggestions": suggestions(rows, config),
    }


def suggestions(rows: list[LevelFeedback], config: AnalyzerConfig) -> list[str]:
    """Band and rule changes the feedback supports; pure, for tests and the report."""
    found = []
    for level, key in LEVEL_KEYS.items():
        of_level = [r for r in rows if r.risk_level == level and r.feedback >= MIN_FEEDBACK]
        noisy = [r for r in of_level if (r.dismissal_rate or 0) >= DISMISS_RATE_HIGH]
        if not noisy:
            continue
        # Most cameras (or the only one): the band is off; else those cameras' views are.
        single = len({r.camera_id for r in rows}) == 1
        if len(noisy) * 2 > len(of_level) and (len(of_level) > 1 or single):
            current = getattr(config, key)
            dismissed = sum(r.dismissed for r in of_level)
            feedback = sum(r.feedback for r in of_level)
            found.append(
                f"{dismissed} of {feedback} {level} events with feedback were dismissed on "
                f"{len(noisy)} of {len(of_level)} cameras: consider raising [analyzer] {key} "
                f"from {current} to {min(current + THRESHOLD_STEP, 100)}, then re-run "
                "scripts/eval_risk.py to see what it costs.")
            continue
        for r in noisy:
            found.append(
                f"{r.camera}: {r.dismissed} of {r.feedback} {level} events were dismissed: "
                "consider a zone that leaves out the street or path it overlooks, marking "
                "regular visitors and cars as trusted entities, or an alert rule with a "
                "higher minimum for this camera.")
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
