"""Tests for hsid/analysis/risk_eval.py, the evaluation set and scripts/eval_risk.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from hsid.analysis.assessment import RISK_LEVELS
from hsid.analysis.prompts import seed_default_prompt
from hsid.analysis.risk_eval import figures, load_scenarios, rule_verdict, run
from hsid.core.config import AnalyzerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SET = REPO_ROOT / "tests" / "data" / "risk_eval" / "scenarios.json"
REAL_DIR = REPO_ROOT.parent / "shared" / "real"

# The rule scorer's figures on the set when it was written (issue 20). A change to the rules
# may raise them; one that lowers them must lower these floors on purpose, in review.
RULES_EXACT_FLOOR = 0.55  # 39 of 70
RULES_WITHIN_ONE_FLOOR = 0.82  # 58 of 70
RULES_FALSE_CRITICAL_CEILING = 0.02  # 1 of 63


def test_the_set_covers_what_householders_report() -> None:
    scenarios = load_scenarios(SET)
    assert len(scenarios) >= 60
    assert len({s.id for s in scenarios}) == len(scenarios)
    assert sum(s.source.startswith("real:") for s in scenarios) >= 10
    assert set(Counter(s.expected for s in scenarios)) == set(RISK_LEVELS)
    groups = {s.group for s in scenarios}
    for group in ("routine daytime traffic", "deliveries", "animals", "residents' cars",
                  "night at an entry point", "lingering", "several people",
                  "tamper during a detection", "unusual hours by baseline", "trusted entities",
                  "low-confidence noise", "crowded public views"):
        assert group in groups
    assert all(s.reason for s in scenarios)


def test_rule_scorer_meets_its_floor_on_the_set() -> None:
    result = figures("rules", run(load_scenarios(SET), rule_verdict(AnalyzerConfig())))
    assert result.exact >= RULES_EXACT_FLOOR, result
    assert result.within_one >= RULES_WITHIN_ONE_FLOOR, result
    assert result.false_critical <= RULES_FALSE_CRITICAL_CEILING, result


def test_eval_script_prints_its_table_for_rules_and_the_tiny_gguf() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "eval_risk.py"), "--tiny", "--limit", "12",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| scorer | scenarios | exact band | within one band")
    assert "false critical" in lines[0] and "contradictions" in lines[0]
    assert lines[2].startswith("| rules | 12 |")
    assert lines[3].startswith("| always low (reference) | 12 |")
    assert lines[4].startswith("| tiny GGUF | 12 |")


async def test_eval_figures_are_recorded_on_the_active_prompt_version(
    db: asyncpg.Pool, database_url: str,
) -> None:
    await seed_default_prompt(db)
    command = [sys.executable, str(REPO_ROOT / "scripts" / "eval_risk.py"), "--tiny",
               "--limit", "3", "--threads", "1", "--database-url", database_url, "--record"]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                   timeout=300, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "recorded on prompt version 1" in done.stdout
    config = json.loads(await db.fetchval(
        "SELECT config_json FROM prompt_versions WHERE version = 1"))
    figures = config["evaluation"]["tiny GGUF"]
    assert figures["scenarios"] == 3 and 0 <= figures["exact"] <= 1
    assert "measured_at" in figures and config["system_prompt"]


def test_real_scenarios_hold_what_the_real_detector_reports(tmp_path: Path) -> None:
    model = REAL_DIR / "models" / "yolov8n_rtdetr_iface.onnx"
    if not model.is_file():
        pytest.skip(f"real detector absent: {model} (see the real folder's README)")
    from hsid.core.config import DetectorConfig
    from hsid.pipeline.detector import Detector, decode

    detector = Detector(DetectorConfig(model=str(model), threads=1), tmp_path)
    detector.load()
    real = [s for s in load_scenarios(SET) if s.source.startswith("real:")]
    for scenario in real[:4]:
        path = REAL_DIR / scenario.source.removeprefix("real:")
        [found] = detector.infer([decode(path.read_bytes(), 50_000_000)])
        assert sorted(d.object_type for d in found) == sorted(
            d.object_type for d in scenario.context.detections), scenario.id
