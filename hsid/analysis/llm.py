"""Risk analysis of a batch of detections: the local LLM under a grammar and a deadline, with the
rule-based scorer (fallback.py) standing in whenever the LLM cannot answer."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hsid.analysis.assessment import (
    BatchContext,
    DetectionContext,
    RiskAssessment,
    class_counts,
    is_night,
    risk_level_for,
    time_of_day,
)
from hsid.analysis.fact_guard import Contradiction, check_facts, correction_note
from hsid.analysis.fallback import fallback_assessment
from hsid.core import metrics
from hsid.core.config import AnalyzerConfig
from hsid.core.errors import TransientError, Unavailable

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp.llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter

log = structlog.get_logger(__name__)

# A batch may hold hundreds of detections; past this many the prompt lists only class counts,
# so the prompt stays far inside n_ctx and prompt processing inside the deadline.
PROMPT_MAX_DETECTIONS = 20
# Small models loop on a phrase until the grammar's length cap; a mild penalty (llama.cpp's
# chat default) breaks most loops without upsetting the JSON punctuation.
REPEAT_PENALTY = 1.1

DEFAULT_SYSTEM_PROMPT = """\
You are the risk analyst of a home security system. Cameras around one private home take \
snapshots when something moves; an object detector lists what it found. You receive one batch: \
the camera, the local time, each detection (object class, detector confidence, where it is in \
the frame, how much of the frame it fills, the zones it is in) and sometimes extra context such \
as how usual this activity is, scene changes, or people and vehicles seen before.

Judge how much this batch should worry the household, on a scale from 0 to 100:
- 0-29 low: routine. Animals, passing cars on the street, known residents, daytime deliveries.
- 30-59 medium: worth a look later. An unknown person at the door by day, a vehicle stopping.
- 60-84 high: needs attention now. Unknown people near entrances at night, someone lingering, \
looking into windows or vehicles, several unknown people together.
- 85-100 critical: a likely intrusion or danger. Forced entry, climbing, people in private areas \
in the middle of the night, weapons.

Be calibrated: most batches are harmless, and false alarms teach people to ignore the system. \
Night, unusual hours, entry zones, several people and unfamiliar activity raise the risk; \
animals, low confidence and regular patterns lower it. Base the judgement only on the facts \
given; do not invent details.

Answer with one JSON object and nothing else: "risk_score" (integer 0-100), "risk_level" \
(low, medium, high or critical, matching the score), "summary" (one short sentence for a \
notification) and "reasoning" (two or three sentences on what drove the score)."""

# Exactly the four keys in order. Strings: printable characters only (no control characters,
# no surrogates), a visible character first, at most SUMMARY_MAX_CHARS / REASONING_MAX_CHARS
# (assessment.py; lead + 199, lead + 599: keep in step). The integer range 0..100 is the
# grammar's own doing. Whitespace is bounded so a model cannot loop on it.
RISK_GRAMMAR = r"""
root         ::= "{" ws score-kv "," ws level-kv "," ws summary-kv "," ws reasoning-kv ws "}"
score-kv     ::= "\"risk_score\":" sp ("100" | [1-9] [0-9] | [0-9])
level-kv     ::= "\"risk_level\":" sp "\"" ("low" | "medium" | "high" | "critical") "\""
summary-kv   ::= "\"summary\":" sp "\"" lead char{0,199} "\""
reasoning-kv ::= "\"reasoning\":" sp "\"" lead char{0,599} "\""
lead         ::= [\x21\x23-\x5B\x5D-\x7E\u00A1-\uD7FF\uE000-\uFFFD] | esc
char         ::= [\x20\x21\x23-\x5B\x5D-\x7E\u00A0-\uD7FF\uE000-\uFFFD] | esc
esc          ::= "\\" ["\\/]
ws           ::= ("\n" [ ]{0,4} | " ")?
sp           ::= " "?
"""

@dataclass(frozen=True, slots=True)
class PromptSettings:
    """The active prompt_configs row for the analyzer model."""

    system_prompt: str
    temperature: float
    max_tokens: int


class AnalysisTimeout(TransientError, TimeoutError):
    """The deadline passed while waiting for the model or during generation."""

    code = "analysis_timeout"


class AnalysisFailed(TransientError):
    """llama.cpp failed, or its output did not hold a valid assessment."""

    code = "analysis_failed"


class FactContradiction(AnalysisFailed):
    """The model's words contradicted the batch's facts, again after being told so."""

    code = "fact_contradiction"


@dataclass(frozen=True, slots=True)
class GuardedAnswer:
    """The outcome of the fact guard: the assessment kept (None when the second answer
    still contradicted the facts) and the contradictions found in each answer, in order."""

    assessment: RiskAssessment | None
    contradictions: tuple[tuple[Contradiction, ...], ...]

    @property
    def outcome(self) -> str:
        """passed (first answer true to the facts), corrected (the second was), rejected."""
        if self.assessment is None:
            return "rejected"
        return "passed" if len(self.contradictions) == 1 else "corrected"


# --- Prompt ----------------------------------------------------------------------------------


def build_prompt(ctx: BatchContext, correction: str = "") -> str:
    """The user message for one batch: facts only; the instructions live in the system prompt.
    `correction` names what a previous answer got wrong (the fact guard's second try).

    The time of day comes first and in words, and each class is counted, because small
    models otherwise read "02:14" or "11:25" as they please and name what is not there."""
    lines = [
        time_in_words(ctx),
        f"Camera: {ctx.camera_name}",
        f"Detections ({len(ctx.detections)}): {class_counts(ctx.detections) or 'none'}; "
        "no other objects were detected",
    ]
    shown = ctx.detections[:PROMPT_MAX_DETECTIONS]
    lines += [f"{i}. {describe_detection(d)}" for i, d in enumerate(shown, start=1)]
    if len(ctx.detections) > len(shown):
        lines.append(f"(and {len(ctx.detections) - len(shown)} more detections, counted above)")
    if ctx.extra_context:
        lines.append("Context:")
        lines += [f"- {line}" for line in ctx.extra_context]
    else:
        lines.append("Context: none (no history, scene changes or known entities).")
    if correction:
        lines.append(correction)
    lines.append("Assess the risk of this batch. Answer with the JSON object only.")
    return "\n".join(lines)


def time_in_words(ctx: BatchContext) -> str:
    """'It is daytime: Sunday 11:25, morning (2026-11-29).' or 'It is night: ...'."""
    moment = ctx.local_time
    if is_night(moment):
        return f"It is night: {moment:%A %H:%M} ({moment:%Y-%m-%d})."
    return f"It is daytime: {moment:%A %H:%M}, {time_of_day(moment)} ({moment:%Y-%m-%d})."


def describe_detection(d: DetectionContext) -> str:
    """'person, confidence 0.93, bottom left of the frame, 12% of the frame, zones: porch'."""
    x1, y1, x2, y2 = d.bbox
    width, height = max(d.image_width, 1), max(d.image_height, 1)
    horizontal = _third((x1 + x2) / 2 / width, ("left", "centre", "right"))
    vertical = _third((y1 + y2) / 2 / height, ("top", "middle", "bottom"))
    centred = (vertical, horizontal) == ("middle", "centre")
    where = "centre" if centred else f"{vertical} {horizontal}"
    share = max(x2 - x1, 0) * max(y2 - y1, 0) / (width * height) * 100
    text = f"{d.object_type}, confidence {d.confidence:.2f}, {where} of the frame, "
    text += f"{share:.0f}% of the frame" if share >= 1 else "under 1% of the frame"
    return text + (f", zones: {', '.join(d.zones)}" if d.zones else "")


def _third(position: float, names: tuple[str, str, str]) -> str:
    return names[min(max(int(position * 3), 0), 2)]


# --- LLM -------------------------------------------------------------------------------------


def default_llm_threads(configured: int) -> int:
    """Threads for generation: the configured count, else the cores the detector leaves free.

    Detection and generation share the CPU when there is no GPU; oversubscribing the cores
    slows both 2.5-3x, so by default each gets its half (the detector takes cpu_count // 2).
    """
    if configured:
        return configured
    cores = os.cpu_count() or 1
    return max(1, cores - cores // 2)


NO_GPU_OFFLOAD = "the installed llama-cpp-python is a CPU-only build (no GPU offload)"
CUDA_BUILD = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
              "llama-cpp-python")


def gpu_offload_supported() -> bool:
    """Whether the installed llama-cpp-python can put layers on a GPU (a CUDA, Metal,
    Vulkan... build that sees a device); False when llama_cpp does not import."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a broken or missing build: then it offloads nothing
        return False


def block_count(metadata: Mapping[str, Any]) -> int | None:
    """The model's transformer layers from GGUF metadata (`<architecture>.block_count`);
    None when the file does not say."""
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.block_count") if arch else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def offloaded_layers(n_gpu_layers: int, layers: int | None, gpu: bool) -> int | None:
    """How many of the model's layers llama.cpp puts on the GPU: n_gpu_layers (-1: all),
    at most the model's `layers`; 0 without GPU offload; None when `layers` is unknown
    and n_gpu_layers asks for all."""
    if not gpu or n_gpu_layers == 0:
        return 0
    if layers is None:
        return None if n_gpu_layers < 0 else n_gpu_layers
    return layers if n_gpu_layers < 0 else min(n_gpu_layers, layers)


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata, read without loading the model ({} when
    it cannot be read); for `hsid check`."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception:  # not a GGUF, truncated, unreadable: the model check says so
        return {}
    found: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if len(field.data) != 1:
            continue  # arrays (the vocabulary...) are not wanted
        part = field.parts[field.data[0]]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            found[name] = bytes(part).decode("utf-8", errors="replace")
        elif len(part) == 1:
            found[name] = part[0].item()
    return found


def describe_offload(config: AnalyzerConfig, gpu: bool, gpu_visible: bool,
                     layers: int | None) -> str:
    """Where the analyzer's layers go and why, in one line, for `hsid check`. `gpu`: the
    installed llama-cpp-python can offload; `layers`: the model's block count."""
    if not gpu:
        if not gpu_visible:
            return ("llama-cpp-python cannot offload (no NVIDIA GPU visible): "
                    "the LLM runs on the CPU")
        return (f"{NO_GPU_OFFLOAD}: the LLM runs on the CPU although a GPU is visible; "
                f"for the GPU rebuild it: {CUDA_BUILD}")
    setting = f"analyzer.n_gpu_layers = {config.n_gpu_layers}"
    if not config.model:
        return f"llama-cpp-python can offload to the GPU ({setting}; no analyzer model)"
    offloaded = offloaded_layers(config.n_gpu_layers, layers, gpu)
    if offloaded == 0:
        return f"llama-cpp-python can offload to the GPU, but {setting}: the LLM runs on the CPU"
    count = "all" if offloaded is None else str(offloaded)
    of = f" of {layers}" if layers is not None else ""
    return (f"llama-cpp-python can offload to the GPU; {setting}: {count}{of} layers of "
            f"{Path(config.model).name} on the GPU")


def _gpu_visible() -> bool:
    from hsid.core.nvml import gpu_names

    return bool(gpu_names())


class LlmAnalyzer:
    """One llama.cpp model, loaded once, generating one assessment at a time.

    Thread-safe: generation is serialised by a lock, because a llama.cpp context is not
    re-entrant. All methods block; the event loop calls them through asyncio.to_thread.
    """

    def __init__(self, config: AnalyzerConfig) -> None:
        self._config = config
        self._llm: llama_cpp.Llama | None = None
        self._chat: Jinja2ChatFormatter | None = None
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """End the generation in progress at its next token (it then raises AnalysisTimeout).

        For shutdown: a thread cannot be cancelled, and a generation left running would
        hold the process past systemd's TimeoutStopSec. Thread-safe; harmless when idle.
        """
        self._interrupted.set()

    def load(self) -> None:
        """Load the GGUF named by config.model. Raises Unavailable if it is missing or bad."""
        path = Path(self._config.model)
        if not path.is_file():
            raise Unavailable(f"analyzer model file {path} does not exist")
        try:
            import llama_cpp  # here, so a broken llama.cpp build degrades to rules, not a crash

            gpu = gpu_offload_supported()
            threads = default_llm_threads(self._config.threads)
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self._config.n_ctx,
                n_gpu_layers=self._config.n_gpu_layers if gpu else 0,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            chat = _chat_formatter(llm)
        except Exception as err:  # llama.cpp, its bindings and Jinja raise many types here
            raise Unavailable(f"analyzer model {path.name} failed to load: {err}") from err
        self._llm, self._chat = llm, chat
        layers = block_count(llm.metadata)
        offloaded = offloaded_layers(self._config.n_gpu_layers, layers, gpu)
        log.info("analyzer_model_loaded", model=path.name, gpu_offload=gpu,
                 gpu_layers=offloaded, layers=layers, n_gpu_layers=self._config.n_gpu_layers,
                 threads=threads, n_ctx=self._config.n_ctx, chat_template=self._chat is not None)
        if not gpu and self._config.n_gpu_layers != 0 and _gpu_visible():
            log.warning("analyzer_gpu_unavailable", reason=NO_GPU_OFFLOAD,
                        hint=f"rebuild it: {CUDA_BUILD}")

    def close(self) -> None:
        """Free the model's memory; the analyzer is unloaded afterwards. Idempotent."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm, self._chat = None, None

    def analyze(self, ctx: BatchContext, settings: PromptSettings) -> RiskAssessment:
        """Assess one batch, its words checked against the facts (answer()). Raises
        AnalysisTimeout past config.timeout_seconds (waiting for the lock included),
        FactContradiction when both answers contradicted the facts, AnalysisFailed on a
        llama.cpp error or unusable output."""
        answer = self.answer(ctx, settings)
        if answer.assessment is None:
            named = "; ".join(c.message for c in answer.contradictions[-1])
            raise FactContradiction(f"fact guard: the answer contradicted the facts twice "
                                    f"({named})")
        return answer.assessment

    def answer(self, ctx: BatchContext, settings: PromptSettings) -> GuardedAnswer:
        """Generate, check the summary and reasoning against the batch's facts, and on a
        contradiction generate once more with it named in the prompt. One deadline covers
        both tries. Counts each outcome and contradiction in /metrics."""
        deadline = time.monotonic() + self._config.timeout_seconds
        found: list[tuple[Contradiction, ...]] = []
        correction = ""
        for _ in range(2):
            result = parse_response(self.complete(ctx, settings, correction, deadline),
                                    self._config)
            problems = check_facts(ctx, result.summary, result.reasoning)
            found.append(tuple(problems))
            for problem in problems:
                metrics.FACT_CONTRADICTIONS.labels(problem.kind).inc()
            if not problems:
                break
            log.info("llm_contradicted_facts", camera=ctx.camera_name, attempt=len(found),
                     contradictions=[c.message for c in problems])
            correction = correction_note(problems)
        answer = GuardedAnswer(None if found[-1] else result, tuple(found))
        metrics.FACT_GUARD.labels(answer.outcome).inc()
        return answer

    def complete(self, ctx: BatchContext, settings: PromptSettings, correction: str = "",
                 deadline: float | None = None) -> str:
        """The model's raw reply for one batch: text the grammar allows, unless it raises."""
        timeout = self._config.timeout_seconds
        if deadline is None:
            deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise AnalysisTimeout(f"model busy for the whole {timeout:g} s deadline")
        try:
            self._interrupted.clear()
            return self._generate(ctx, settings, deadline, correction)
        finally:
            self._lock.release()

    def _generate(self, ctx: BatchContext, settings: PromptSettings, deadline: float,
                  correction: str = "") -> str:
        import llama_cpp

        if self._llm is None:
            raise Unavailable("analyzer model is not loaded")
        passed = threading.Event()

        def past_deadline(_tokens: Any, _logits: Any) -> bool:
            # Checked after every token: a thread cannot be cancelled, so the deadline
            # must be enforced inside generation.
            if time.monotonic() >= deadline or self._interrupted.is_set():
                passed.set()
            return passed.is_set()

        started = time.monotonic()
        try:
            reply = self._llm.create_completion(
                prompt=self._prompt_tokens(self._llm, ctx, settings, correction),
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                repeat_penalty=REPEAT_PENALTY,
                grammar=llama_cpp.LlamaGrammar.from_string(RISK_GRAMMAR, verbose=False),
                stopping_criteria=llama_cpp.StoppingCriteriaList([past_deadline]),
            )
        except (ValueError, RuntimeError) as err:
            raise AnalysisFailed(f"generation failed: {err}") from err
        if passed.is_set() and self._interrupted.is_set():
            raise AnalysisTimeout("generation interrupted: hsid is stopping")
        if passed.is_set():
            timeout = self._config.timeout_seconds
            raise AnalysisTimeout(f"generation ran past the {timeout:g} s deadline")
        if isinstance(reply, Iterator):  # a stream, which only stream=True gives
            raise AnalysisFailed("generation streamed its reply")
        choice, usage = reply["choices"][0], reply["usage"]
        log.debug("llm_generation_done", duration_ms=round((time.monotonic() - started) * 1000),
                  prompt_tokens=usage["prompt_tokens"], tokens=usage["completion_tokens"],
                  finish_reason=choice["finish_reason"])
        if choice["finish_reason"] == "length":
            raise AnalysisFailed(f"reply cut off at max_tokens={settings.max_tokens}")
        return choice["text"]

    def _prompt_tokens(
        self, llm: llama_cpp.Llama, ctx: BatchContext, settings: PromptSettings,
        correction: str = "",
    ) -> list[int]:
        """The prompt through the model's own chat template when it has one, else plain text."""
        user = build_prompt(ctx, correction)
        if self._chat is None:
            text = f"{settings.system_prompt}\n\n{user}\n"
            return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        rendered = _render_chat(self._chat, settings.system_prompt, user)
        return llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )


def _chat_formatter(llm: llama_cpp.Llama) -> Jinja2ChatFormatter | None:
    """The GGUF's chat template compiled once, or None if it has none.

    The template is rendered by hsid rather than through create_chat_completion, because
    llama-cpp-python's chat handler replaces the caller's stopping_criteria with its own,
    and the deadline lives in the stopping criteria.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return None
    return Jinja2ChatFormatter(
        template=template,
        bos_token=_token_text(llm, llm.token_bos()),
        eos_token=_token_text(llm, llm.token_eos()),
    )


def _render_chat(chat: Jinja2ChatFormatter, system: str, user: str) -> ChatFormatterResponse:
    """Render system + user turns; templates that refuse a system role (Gemma's, for one)
    get the system prompt at the top of the user turn instead."""
    import jinja2

    try:
        return chat(messages=[{"role": "system", "content": system},
                              {"role": "user", "content": user}])
    except (ValueError, jinja2.TemplateError):
        return chat(messages=[{"role": "user", "content": f"{system}\n\n{user}"}])


def _token_text(llm: llama_cpp.Llama, token: int) -> str:
    """A special token's text (for templates that write out bos_token); '' if there is none."""
    if token == -1:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def parse_response(text: str, config: AnalyzerConfig) -> RiskAssessment:
    """Turn the model's JSON into an assessment; risk_level comes from the score, never the
    model. Raises AnalysisFailed if the text is not a complete, valid object (a reply cut
    short by max_tokens, for one)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnalysisFailed(f"model reply is not complete JSON: {err}") from err
    score = data.get("risk_score") if isinstance(data, dict) else None
    if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
        raise AnalysisFailed(f"model reply has no risk_score in 0..100: {text[:80]!r}")
    summary, reasoning = data.get("summary"), data.get("reasoning")
    if not (isinstance(summary, str) and summary.strip()):
        raise AnalysisFailed("model reply has an empty summary")
    if not (isinstance(reasoning, str) and reasoning.strip()):
        raise AnalysisFailed("model reply has empty reasoning")
    level = risk_level_for(score, config)
    if data.get("risk_level") != level:
        log.debug("model_risk_level_replaced", model_level=data.get("risk_level"), level=level)
    return RiskAssessment(score, level, summary.strip(), reasoning.strip(), used_llm=True)


# --- Facade ----------------------------------------------------------------------------------


class RiskScorer:
    """What the analyze worker calls: the LLM when it can answer, the rule-based scorer
    otherwise. assess() never raises for an LLM failure."""

    def __init__(self, config: AnalyzerConfig) -> None:
        self._config = config
        self._analyzer = LlmAnalyzer(config)
        self._unavailable: str | None = "analyzer model not loaded"

    @property
    def unavailable_reason(self) -> str | None:
        """Why assessments are rule-based (for health), or None while the LLM is in use."""
        return self._unavailable

    async def load(self) -> None:
        """Load the model in a thread. Never raises for model problems: they are logged and
        recorded, and assessments fall back to rules."""
        if not self._config.model:
            self._unavailable = "no analyzer model configured"
            log.info("analyzer_rule_based_only", reason=self._unavailable)
            return
        try:
            await asyncio.to_thread(self._analyzer.load)
        except Unavailable as err:
            self._unavailable = str(err)
            log.warning("analyzer_model_unavailable", reason=self._unavailable)
            return
        self._unavailable = None

    async def close(self) -> None:
        await asyncio.to_thread(self._analyzer.close)
        self._unavailable = "analyzer model closed"

    async def assess(self, ctx: BatchContext, settings: PromptSettings) -> RiskAssessment:
        """An assessment for the batch: from the LLM, or from the rules with the reason."""
        if self._unavailable is not None:
            return fallback_assessment(ctx, self._unavailable, self._config)
        try:
            return await asyncio.to_thread(self._analyzer.analyze, ctx, settings)
        except asyncio.CancelledError:
            self._analyzer.interrupt()  # shutting down: the thread must not outlive us long
            raise
        except AnalysisTimeout as err:
            reason = f"LLM timed out: {err}"
        except FactContradiction as err:
            reason = f"LLM answer rejected: {err}"
        except Exception as err:  # any LLM failure: the event must still be made
            reason = f"LLM failed: {err}"
        log.warning("analyzer_fell_back", camera=ctx.camera_name, reason=reason)
        return fallback_assessment(ctx, reason, self._config)
