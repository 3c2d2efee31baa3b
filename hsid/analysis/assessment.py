"""The analyzer's shared vocabulary: a batch as it is assessed, the verdict and its risk level."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from hsid.core.config import AnalyzerConfig
from hsid.entities.context import KnownEntity

RISK_LEVELS = ("low", "medium", "high", "critical")
SUMMARY_MAX_CHARS = 200
REASONING_MAX_CHARS = 600
NIGHT_HOURS = (22, 6)  # [start, end) in local time


@dataclass(frozen=True, slots=True)
class DetectionContext:
    """One detection as the prompt describes it; bbox is (x1, y1, x2, y2) in image pixels."""

    object_type: str
    confidence: float
    bbox: tuple[int, int, int, int]
    image_width: int
    image_height: int
    zones: list[str] = field(default_factory=list)  # names, for the prompt
    zone_ids: tuple[str, ...] = ()  # the same zones by id, for alert rules
    entity_id: str | None = None  # the entity it was recognised as (entities/matcher.py)
    trust_status: str | None = None  # that entity's: trusted, untrusted, unknown


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What the analyzer knows about a batch; extra_context holds lines from enrichment
    services (baseline anomaly, scene changes, known entities), already phrased for the prompt."""

    camera_name: str
    local_time: datetime
    detections: list[DetectionContext]
    extra_context: list[str] = field(default_factory=list)
    entities: list[KnownEntity] = field(default_factory=list)  # for the rule scorer


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    """The verdict stored on the event; fallback_reason says why the LLM was not used."""

    risk_score: int
    risk_level: str
    summary: str
    reasoning: str
    used_llm: bool
    fallback_reason: str | None = None


def risk_level_for(score: int, config: AnalyzerConfig) -> str:
    """The level for a score by the configured thresholds; the only source of risk_level."""
    thresholds = (config.risk_medium, config.risk_high, config.risk_critical)
    return RISK_LEVELS[sum(score >= threshold for threshold in thresholds)]


def time_of_day(moment: datetime) -> str:
    hour = moment.hour
    if is_night(moment):
        return "night"
    return "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"


def is_night(moment: datetime) -> bool:
    start, end = NIGHT_HOURS
    return moment.hour >= start or moment.hour < end


def class_counts(detections: list[DetectionContext]) -> str:
    """'2 person, 1 cat': detections counted by class, most frequent first."""
    counts = Counter(d.object_type for d in detections)
    return ", ".join(f"{n} {name}" for name, n in counts.most_common())
