"""Tests for hsid/analysis/fact_guard.py and the analyzer's use of it: hand-written model
answers checked against a batch's facts, and the second try and fall-back they lead to."""

from __future__ import annotations

from datetime import datetime

import pytest

from hsid.analysis.assessment import BatchContext, DetectionContext
from hsid.analysis.fact_guard import check_facts, correction_note
from hsid.analysis.llm import (
    DEFAULT_SYSTEM_PROMPT,
    FactContradiction,
    LlmAnalyzer,
    PromptSettings,
    RiskScorer,
    build_prompt,
)
from hsid.core import metrics
from hsid.core.config import AnalyzerConfig
from tests.pipeline.samples import DAY, NIGHT, TZ, batch, cat, person

SETTINGS = PromptSettings(DEFAULT_SYSTEM_PROMPT, temperature=0.2, max_tokens=600)
SUNDAY_MORNING = datetime(2026, 11, 29, 11, 25, tzinfo=TZ)


def car() -> DetectionContext:
    return DetectionContext("car", 0.92, (600, 500, 1500, 1000), 1920, 1080, ["driveway"])


def kinds(ctx: BatchContext, text: str) -> list[str]:
    return [c.kind for c in check_facts(ctx, text)]


# --- Each kind of contradiction ---------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Several unknown people are near entrances at night.",
    "A person is observed near the driveway at night.",
    "Someone walks past in the dark.",
    "An intruder at midnight.",
])
def test_night_claimed_by_day_is_a_contradiction(text: str) -> None:
    ctx = batch(person(), person(), at=SUNDAY_MORNING)
    assert "time_of_day" in kinds(ctx, text)


@pytest.mark.parametrize("text", [
    "A person at the door in broad daylight.",
    "Someone on the porch this afternoon.",
    "A visitor during the day.",
])
def test_day_claimed_by_night_is_a_contradiction(text: str) -> None:
    assert kinds(batch(person(), at=NIGHT), text) == ["time_of_day"]


def test_time_words_that_fit_the_hour_pass() -> None:
    assert check_facts(batch(person(), at=NIGHT), "A person at the door at night.") == []
    assert check_facts(batch(person(), at=DAY), "A person at the door this afternoon.") == []
    assert check_facts(batch(person(), at=DAY), "Not at night: a person by day.") == []


@pytest.mark.parametrize(("text", "named"), [
    ("A dog and a person in the yard.", "dog"),
    ("A vehicle stops by the house.", "vehicle"),
    ("Two pedestrians and a bicycle.", "bicycle"),
    ("An intruder with a knife.", "knife"),
])
def test_a_class_not_in_the_batch_is_a_contradiction(text: str, named: str) -> None:
    found = check_facts(batch(person(), person(), at=DAY), text)
    assert [c.kind for c in found] == ["object_class"]
    assert f'"{named}"' in found[0].message and "2 person" in found[0].message


def test_a_count_above_the_batch_is_a_contradiction() -> None:
    ctx = batch(person(), cat(), at=DAY)
    assert kinds(ctx, "Three people and a cat are in the garden.") == ["object_count"]
    assert kinds(ctx, "Several unknown people near the door.") == ["object_count"]
    assert check_facts(batch(person(), person(), person(), at=DAY), "Three people.") == []


@pytest.mark.parametrize(("text", "given"), [
    ("Scene changes suggest the camera was tampered with.", "Usual activity: 2 an hour."),
    ("The person is a trusted resident.", "Scene change on this camera since 02:10: dark."),
    ("This is unusually busy for the camera; the baseline is low.", ""),
])
def test_context_that_was_not_given_is_a_contradiction(text: str, given: str) -> None:
    ctx = batch(person(), at=NIGHT, extra=[given] if given else [])
    assert "context" in kinds(ctx, text)


def test_context_that_was_given_may_be_mentioned() -> None:
    ctx = batch(person(), at=NIGHT, extra=[
        "Scene change on this camera since 02:10: the view is blocked or blurred.",
        "Person 1 (trusted: the household marked it as known and safe): seen 3 times today "
        "on Front Door, first at 07:10.",
        "This camera usually sees 0.2 detections an hour on Tuesday between 02:00 and 03:00 "
        "(6 weeks of history); this hour so far: 4. That is unusually busy."])
    text = ("A trusted resident at the door at night; the view is obstructed and the scene "
            "change is recent. Unusually busy for the hour, well above the baseline.")
    assert check_facts(ctx, text) == []


def test_negated_claims_are_no_claims() -> None:
    ctx = batch(person(), at=DAY)
    text = "No vehicles and no animals; there is no scene change and nothing at night."
    assert check_facts(ctx, text) == []


def test_the_issue_examples_are_caught() -> None:
    campus = batch(*[person(0.75)] * 4, car(), at=SUNDAY_MORNING)
    assert set(kinds(campus, "Several unknown people are near entrances at night. "
                             "Recent scene changes add to the risk.")) == {"time_of_day", "context"}
    street = batch(person(0.92), at=SUNDAY_MORNING)
    assert kinds(street, "A person is observed near the driveway at night") == ["time_of_day"]


# --- Prompt ---------------------------------------------------------------------------------


def test_prompt_states_the_time_of_day_in_words_first_and_counts_each_class() -> None:
    prompt = build_prompt(batch(person(), person(), cat(), at=SUNDAY_MORNING)).splitlines()
    assert prompt[0] == "It is daytime: Sunday 11:25, morning (2026-11-29)."
    assert "Detections (3): 2 person, 1 cat; no other objects were detected" in prompt
    assert "Context: none (no history, scene changes or known entities)." in prompt
    assert build_prompt(batch(person(), at=NIGHT)).startswith("It is night: Tuesday 02:14")


def test_the_correction_is_named_in_the_second_prompt() -> None:
    ctx = batch(person(), at=DAY)
    note = correction_note(check_facts(ctx, "A dog at night."))
    prompt = build_prompt(ctx, note)
    assert '"dog"' in prompt and '"night"' in prompt and "Answer again" in prompt


# --- The analyzer's guard -------------------------------------------------------------------


class ScriptedAnalyzer(LlmAnalyzer):
    """The model replaced by hand-written replies, one per generation, in order."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(AnalyzerConfig(model="scripted.gguf"))
        self.replies = replies
        self.corrections: list[str] = []

    def complete(self, ctx: BatchContext, settings: PromptSettings, correction: str = "",
                 deadline: float | None = None) -> str:
        self.corrections.append(correction)
        return self.replies[len(self.corrections) - 1]


def reply(score: int, summary: str, reasoning: str = "Facts as given.") -> str:
    return (f'{{"risk_score": {score}, "risk_level": "low", "summary": "{summary}", '
            f'"reasoning": "{reasoning}"}}')


def guard_count(outcome: str) -> float:
    return metrics.FACT_GUARD.labels(outcome)._value.get()


def test_an_answer_true_to_the_facts_is_kept_at_once() -> None:
    analyzer = ScriptedAnalyzer([reply(40, "A person at the door this afternoon.")])
    before = guard_count("passed")
    result = analyzer.analyze(batch(person(), at=DAY), SETTINGS)
    assert result.used_llm and result.risk_score == 40
    assert analyzer.corrections == [""]
    assert guard_count("passed") == before + 1


def test_a_contradiction_is_named_in_a_second_generation() -> None:
    analyzer = ScriptedAnalyzer([reply(85, "A person near the driveway at night."),
                                 reply(35, "A person near the driveway this morning.")])
    before = guard_count("corrected")
    result = analyzer.analyze(batch(person(), at=SUNDAY_MORNING), SETTINGS)
    assert result.used_llm and result.risk_score == 35
    first, second = analyzer.corrections
    assert first == "" and '"night"' in second and "11:25" in second
    assert guard_count("corrected") == before + 1


async def test_a_second_contradiction_keeps_the_rule_scorers_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analyzer = ScriptedAnalyzer([reply(85, "People at night."), reply(85, "A dog at night.")])
    with pytest.raises(FactContradiction):
        analyzer.analyze(batch(person(), at=DAY), SETTINGS)
    scorer = RiskScorer(AnalyzerConfig())
    monkeypatch.setattr(scorer, "_analyzer", ScriptedAnalyzer(analyzer.replies))
    monkeypatch.setattr(scorer, "_unavailable", None)
    before = guard_count("rejected")
    result = await scorer.assess(batch(person(), at=DAY), SETTINGS)
    assert not result.used_llm
    assert "contradicted the facts twice" in result.reasoning and '"dog"' in result.reasoning
    assert guard_count("rejected") == before + 1


def test_guard_outcomes_are_exported_on_metrics() -> None:
    from prometheus_client import generate_latest

    exposition = generate_latest(metrics.REGISTRY).decode()
    assert "# TYPE hsid_fact_guard_total counter" in exposition
    assert "# TYPE hsid_fact_contradictions_total counter" in exposition
