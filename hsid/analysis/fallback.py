"""Rule-based risk scoring: used when the LLM cannot answer."""

from __future__ import annotations

from hsid.analysis.assessment import (
    REASONING_MAX_CHARS,
    SUMMARY_MAX_CHARS,
    BatchContext,
    DetectionContext,
    RiskAssessment,
    class_counts,
    is_night,
    risk_level_for,
    time_of_day,
)
from hsid.core.config import AnalyzerConfig
from hsid.entities.matcher import ENTITY_CLASSES

# Points for the most worrying detection at full confidence; people matter most at a home.
CLASS_WEIGHTS: dict[str, int] = {
    "person": 50,
    "car": 25, "truck": 25, "motorcycle": 25, "bus": 20, "bicycle": 20,
    "dog": 8, "cat": 4, "bird": 2,
}
UNKNOWN_CLASS_WEIGHT = 10
SIGNIFICANT_WEIGHT = 20  # people and vehicles: the classes whose numbers and hour matter
NIGHT_FACTOR = 1.5  # a person at the door at 02:00 is a different matter than at 14:00
# Per further person or vehicle detection. Kept small: a batch counts detections, not distinct
# people, and one person crossing the yard shows up in several snapshots.
COUNT_BONUS = 5
COUNT_BONUS_CAP = 15
# Known entities (entities/context.py). One the household marked untrusted is back;
# an unknown one has been going from camera to camera today (front, side, back door);
# everyone in the batch is trusted (the family, the neighbour's car).
UNTRUSTED_BONUS = 25
ROAMING_BONUS = 10  # per further camera the unknown entity was seen on today
ROAMING_BONUS_CAP = 20
TRUSTED_FACTOR = 0.25


def fallback_assessment(ctx: BatchContext, reason: str, config: AnalyzerConfig) -> RiskAssessment:
    """Score a batch by fixed rules: the most worrying class scaled by its confidence, raised
    at night and by the number of people and vehicles. Never raises; used whenever the LLM
    cannot answer, so an event is never lost for want of a model."""
    night = is_night(ctx.local_time)
    if not ctx.detections:
        return _assessment(0, ctx, night, reason, "There were no detections to score.", config)
    top = max(ctx.detections, key=_weighted)
    weight = _class_weight(top.object_type)
    significant = sum(_class_weight(d.object_type) >= SIGNIFICANT_WEIGHT for d in ctx.detections)
    points = _weighted(top)
    why = [f"Strongest detection: {top.object_type} at {top.confidence:.2f} confidence "
           f"(weight {weight})."]
    if night and weight >= SIGNIFICANT_WEIGHT:
        points *= NIGHT_FACTOR
        why.append(f"Night time multiplied it by {NIGHT_FACTOR:g}.")
    if significant > 1:
        bonus = min(COUNT_BONUS * (significant - 1), COUNT_BONUS_CAP)
        points += bonus
        why.append(f"{significant} people or vehicles in the batch added {bonus}.")
    points = _entities(ctx, points, why)
    return _assessment(round(min(points, 100)), ctx, night, reason, " ".join(why), config)


def _entities(ctx: BatchContext, points: float, why: list[str]) -> float:
    """Raise the score for untrusted and roaming unknown entities, lower it when every
    person and vehicle is trusted; the reasons go to `why`."""
    untrusted = [e for e in ctx.entities if e.trust_status == "untrusted"]
    if untrusted:
        points += UNTRUSTED_BONUS
        kinds = " and ".join(sorted({e.entity_type for e in untrusted}))
        why.append(f"A {kinds} marked untrusted is back: +{UNTRUSTED_BONUS}.")
    unknown = [e for e in ctx.entities if e.trust_status == "unknown"]
    roaming = max((len(e.cameras_today) for e in unknown), default=0)
    if roaming > 1:
        bonus = min(ROAMING_BONUS * (roaming - 1), ROAMING_BONUS_CAP)
        points += bonus
        why.append(f"An unknown entity was seen on {roaming} cameras today: +{bonus}.")
    watched = [d for d in ctx.detections if d.object_type in ENTITY_CLASSES]
    if watched and all(d.trust_status == "trusted" for d in watched):
        points *= TRUSTED_FACTOR
        why.append(f"Every person and vehicle is a trusted entity: x{TRUSTED_FACTOR:g}.")
    return points


def _class_weight(object_type: str) -> int:
    return CLASS_WEIGHTS.get(object_type, UNKNOWN_CLASS_WEIGHT)


def _weighted(d: DetectionContext) -> float:
    """Class weight scaled by confidence: a 0.5 detection counts three quarters of a sure one."""
    return _class_weight(d.object_type) * (0.5 + 0.5 * min(max(d.confidence, 0.0), 1.0))


def _assessment(
    score: int, ctx: BatchContext, night: bool, reason: str, why: str, config: AnalyzerConfig
) -> RiskAssessment:
    seen = class_counts(ctx.detections) or "nothing"
    when = "at night" if night else f"in the {time_of_day(ctx.local_time)}"
    summary = f"{ctx.camera_name}: {seen} {when} ({ctx.local_time:%a %H:%M})."
    reasoning = f"Rule-based score; the LLM was not used ({reason}). {why}"
    return RiskAssessment(
        risk_score=score,
        risk_level=risk_level_for(score, config),
        summary=summary[:SUMMARY_MAX_CHARS],
        reasoning=reasoning[:REASONING_MAX_CHARS],
        used_llm=False,
        fallback_reason=reason,
    )
