#!/usr/bin/env python3
"""Fault report: the real daemon through store outages, a full disk and crashes, in a table.

    python scripts/fault_report.py [--short] [--only NAME ...] [--images N] [--rate R]

Each scenario starts its own PostgreSQL and redis-server (private, on unix sockets: never
the machine's shared ones), `hsid run` with the tiny models and short batch windows, and a
steady stream of uploads into a camera folder written the way FTP servers write; it injects
its fault, waits for the pipeline to drain, and counts:

    stored        uploads with detection rows (each upload holds exactly one object)
    duplicates    uploads stored by more than one run + detections in more than one event
    lost          uploads never stored + detections in no event (unanalysed)
    dead letters  entries in the dlq lists
    daemon exits  exits nobody caused (a death, a status other than 0 after SIGTERM, or
                  no exit within the unit's TimeoutStopSec)

Scenarios: postgres_down (30 s; --short 10 s), postgres_down_long (5 min; 45 s),
redis_down_empty (30 s; 10 s, restarted with nothing), disk_full (state dir on a tiny
tmpfs, full for 30 s; 10 s; root only, else skipped), kill9 (5 kills; 3), sigterm,
poison_analysis (two kills with one analysis job in flight). Every row must read 0 lost,
0 duplicates, 0 dead letters and 0 daemon exits, and meet its scenario's expectation; the
exit status is 1 when one does not. Progress is printed as it goes, the table (Markdown)
and the notes at the end; the logs of a failing scenario are kept and their folder named.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from hsid.embedded import find_postgres_bin, find_redis_server  # noqa: E402
from tests.fault_lab import Models  # noqa: E402 - the repository root is on the path now
from tests.faults import SCENARIOS, Outcome, Plan, markdown, run_scenario  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true",
                        help="10 s outages, 45 s for the long one, 3 kills (what CI runs)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--images", type=int, help="uploads per scenario (default: from the "
                        "timings, a steady stream from before the fault until after it)")
    parser.add_argument("--rate", type=float, default=3.0, help="uploads a second (default 3)")
    parser.add_argument("--seed", type=int, help="seed of the random kill moments")
    return parser.parse_args(argv)


def build_models(dest: Path) -> Models:
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make-test-models"), str(dest)],
                   check=True, timeout=120, capture_output=True)
    return Models(dest / "tiny-detector.onnx", dest / "tiny-llm.gguf")


def say(line: str) -> None:
    print(line, flush=True)


async def run(names: list[str], plan: Plan, models: Models) -> list[Outcome]:
    return [await run_scenario(SCENARIOS[name], plan, models, say, keep_failed=True)
            for name in names]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    missing = [what for what, found in (("PostgreSQL server binaries", find_postgres_bin()),
                                        ("redis-server", find_redis_server())) if not found]
    if missing:
        print(f"cannot run: no {' and no '.join(missing)} on this machine "
              "(apt install postgresql redis-server)", file=sys.stderr)
        return 2
    plan = Plan(short=args.short, rate=args.rate, images=args.images, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="hsid-fault-models-") as models_dir:
        outcomes = asyncio.run(run(args.only or list(SCENARIOS), plan,
                                   build_models(Path(models_dir))))
    print()
    print(markdown(outcomes))
    print()
    for outcome in outcomes:
        print(outcome.explain())
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
