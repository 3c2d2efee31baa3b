"""Tests for hsid/analysis/fallback.py: the rule-based scorer that stands in for the LLM."""

from __future__ import annotations

from hsid.analysis.assessment import (
    SUMMARY_MAX_CHARS,
    BatchContext,
    risk_level_for,
)
from hsid.analysis.fallback import fallback_assessment
from hsid.core.config import AnalyzerConfig
from tests.pipeline.samples import DAY, NIGHT, batch, cat, person


def score(ctx: BatchContext) -> int:
    return fallback_assessment(ctx, "test", AnalyzerConfig()).risk_score


def test_person_at_night_scores_higher_than_a_cat_by_day() -> None:
    assert score(batch(person(), at=NIGHT)) > score(batch(cat(), at=DAY))
    assert score(batch(person(), at=NIGHT)) > score(batch(person(), at=DAY))


def test_more_people_score_higher() -> None:
    one, three = score(batch(person())), score(batch(person(), person(), person()))
    assert three > one


def test_higher_confidence_scores_higher() -> None:
    assert score(batch(person(0.95))) > score(batch(person(0.4)))


def test_fallback_is_consistent_and_says_why() -> None:
    config = AnalyzerConfig()
    result = fallback_assessment(batch(person(), person(), cat()), "model missing", config)
    assert not result.used_llm and result.fallback_reason == "model missing"
    assert 0 <= result.risk_score <= 100
    assert result.risk_level == risk_level_for(result.risk_score, config)
    assert "LLM was not used" in result.reasoning and "model missing" in result.reasoning
    assert "Front Door" in result.summary and len(result.summary) <= SUMMARY_MAX_CHARS


def test_empty_batch_scores_zero() -> None:
    result = fallback_assessment(batch(at=DAY), "test", AnalyzerConfig())
    assert (result.risk_score, result.risk_level) == (0, "low")


def test_count_bonus_is_capped() -> None:
    crowd = score(batch(*[person(1.0)] * 50))
    assert crowd == score(batch(*[person(1.0)] * 4)) <= 100
