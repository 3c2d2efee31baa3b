"""The risk evaluation set: scenario batches with expected bands, and the figures a scorer earns.

The set lives in tests/data/risk_eval/scenarios.json (issue 20); scripts/eval_risk.py scores
it with the rule scorer and any GGUF, and the rule scorer's figures are a test's floor. A
scenario is a batch as the analyzer sees it: camera, local time, detections with boxes and
zones, the context lines enrichment would add, the entities the rule scorer weighs, and the
band a careful householder expects, with a one-line reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hsid.analysis.assessment import RISK_LEVELS, BatchContext, DetectionContext, RiskAssessment
from hsid.core.config import AnalyzerConfig
from hsid.entities.context import KnownEntity

# Entities the set marks trusted or untrusted have a history; unknown ones are new today.
KNOWN_DETECTION_COUNT = 20


@dataclass(frozen=True, slots=True)
class Scenario:
    """One batch of the set and the band it should get."""

    id: str
    group: str
    source: str  # "written", or "real:<file>" for facts the real detector reported
    context: BatchContext
    expected: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a scorer made of one scenario. `contradictions` counts the claims the fact guard
    found in the scorer's first answer (None: its words were not checked, as for rules)."""

    scenario: Scenario
    assessment: RiskAssessment
    seconds: float
    contradictions: int | None = None
    outcome: str = ""  # the fact guard's: passed, corrected, rejected; failed; "" for rules


@dataclass(frozen=True, slots=True)
class Figures:
    """A scorer's figures on the set; rates are fractions of the scenarios."""

    scorer: str
    scenarios: int
    exact: float
    within_one: float
    false_critical: float  # critical where the expected band is lower, over those scenarios
    contradictions: float | None  # first answers that contradicted the facts
    mean_seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)


def load_scenarios(path: Path) -> list[Scenario]:
    """Every scenario of the set at `path`; raises ValueError naming a malformed one."""
    document = json.loads(path.read_text(encoding="utf-8"))
    scenarios = []
    for raw in document["scenarios"]:
        try:
            scenarios.append(_scenario(raw))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"scenario {raw.get('id', '?')}: {err!r}") from err
    return scenarios


def _scenario(raw: dict) -> Scenario:
    if raw["expected"] not in RISK_LEVELS:
        raise ValueError(f"expected band {raw['expected']!r} is not one of {RISK_LEVELS}")
    moment = datetime.fromisoformat(raw["local_time"])
    width, height = raw["image_size"]
    trust = {e["id"]: e["trust"] for e in raw["entities"]}
    detections = [
        DetectionContext(d["class"], float(d["confidence"]), tuple(d["bbox"]), width, height,
                         list(d["zones"]), entity_id=d.get("entity"),
                         trust_status=trust.get(d.get("entity", "")))
        for d in raw["detections"]]
    entities = [
        KnownEntity(e["id"], e["type"], e["trust"],
                    tuple(i for i, d in enumerate(raw["detections"]) if d.get("entity") == e["id"]),
                    moment, 1 if e["trust"] == "unknown" else KNOWN_DETECTION_COUNT,
                    sightings_today=len(e["cameras_today"]),
                    cameras_today=tuple(e["cameras_today"]))
        for e in raw["entities"]]
    context = BatchContext(raw["camera"], moment, detections, list(raw["context"]), entities)
    return Scenario(raw["id"], raw["group"], raw["source"], context, raw["expected"],
                    raw["reason"])


def run(scenarios: list[Scenario], score: Callable[[Scenario], Verdict]) -> list[Verdict]:
    return [score(scenario) for scenario in scenarios]


def rule_verdict(config: AnalyzerConfig) -> Callable[[Scenario], Verdict]:
    """A scorer for run(): the rule scorer, as the daemon uses it without a model."""
    from hsid.analysis.fallback import fallback_assessment

    def score(scenario: Scenario) -> Verdict:
        started = time.perf_counter()
        assessment = fallback_assessment(scenario.context, "evaluation", config)
        return Verdict(scenario, assessment, time.perf_counter() - started)

    return score


def constant_verdict(level: str) -> Callable[[Scenario], Verdict]:
    """A scorer for run() that gives every scenario `level`: the figure any real scorer must
    beat (most batches are harmless, so "always low" agrees often and helps no one)."""
    score = {"low": 0, "medium": 30, "high": 60, "critical": 85}[level]

    def verdict(scenario: Scenario) -> Verdict:
        return Verdict(scenario, RiskAssessment(score, level, level, level, used_llm=False), 0.0)

    return verdict


def figures(scorer: str, verdicts: list[Verdict]) -> Figures:
    """Band agreement, false criticals, contradictions and time over `verdicts`."""
    n = max(len(verdicts), 1)
    distance = [abs(RISK_LEVELS.index(v.assessment.risk_level)
                    - RISK_LEVELS.index(v.scenario.expected)) for v in verdicts]
    below_critical = [v for v in verdicts if v.scenario.expected != "critical"]
    false_critical = sum(v.assessment.risk_level == "critical" for v in below_critical)
    checked = [v.contradictions for v in verdicts if v.contradictions is not None]
    outcomes: dict[str, int] = {}
    for v in verdicts:
        if v.outcome:
            outcomes[v.outcome] = outcomes.get(v.outcome, 0) + 1
    return Figures(
        scorer=scorer, scenarios=len(verdicts),
        exact=sum(d == 0 for d in distance) / n,
        within_one=sum(d <= 1 for d in distance) / n,
        false_critical=false_critical / max(len(below_critical), 1),
        contradictions=(sum(c > 0 for c in checked) / len(checked)) if checked else None,
        mean_seconds=sum(v.seconds for v in verdicts) / n,
        outcomes=outcomes)


def table(rows: list[Figures]) -> str:
    """A Markdown table of the figures, one scorer a row (README-ready)."""
    lines = ["| scorer | scenarios | exact band | within one band | false critical "
             "| contradictions | guard (passed/corrected/rejected/failed) | mean time |",
             "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        said = "n/a" if f.contradictions is None else f"{f.contradictions:.0%}"
        guard = "/".join(str(f.outcomes.get(k, 0))
                         for k in ("passed", "corrected", "rejected", "failed"))
        guard = guard if f.outcomes else "n/a"
        lines.append(f"| {f.scorer} | {f.scenarios} | {f.exact:.0%} | {f.within_one:.0%} "
                     f"| {f.false_critical:.0%} | {said} | {guard} | {_seconds(f.mean_seconds)} |")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.1f} s"
