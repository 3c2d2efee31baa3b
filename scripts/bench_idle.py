#!/usr/bin/env python3
"""What hsid costs at rest: CPU, wake-ups and memory with nothing arriving.

    python scripts/bench_idle.py [--seconds 60] [--settle 15] [--detector real|tiny|none]
                                 [--stages all]

Starts `hsid run` as a subprocess on throwaway stores with the chosen detector (real:
../shared/real/models/yolov8n_rtdetr_iface.onnx, the official RT-DETRv2 interface; the
default when that folder exists) and no LLM, waits until it is healthy and --settle seconds
more (start-up work done), then reads /proc over --seconds with nothing arriving. Prints:
- CPU in % of one core (utime + stime of all the daemon's threads);
- wake-ups per second: context switches of all its threads (voluntary + involuntary), the
  cost of short polls even when each does little;
- RSS (VmRSS) and the thread count;
- the same RSS for a daemon with no models (`--detector none`: the API, watcher and
  services only), when --compare-rss is given.

The issue's bar: under 0.5% of a core over 60 s with the real detector loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import CLOCK_TICKS, process_ticks, throwaway_stores, wait_healthy

from hsid.model_files.tiny_detector import write_tiny_detector

PORT = 18767
REAL_DETECTOR = (Path(__file__).resolve().parents[2] / "shared" / "real" / "models"
                 / "yolov8n_rtdetr_iface.onnx")
TARGET_PERCENT = 0.5  # of one core, the bar


@dataclass(frozen=True)
class Reading:
    at: float
    ticks: int  # utime + stime, all threads
    switches: int  # voluntary + involuntary context switches, all threads

    @classmethod
    def now(cls, pid: int) -> Reading:
        switches = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except FileNotFoundError:
                continue
            switches += sum(int(line.split()[1]) for line in status.splitlines()
                            if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        return cls(time.monotonic(), process_ticks(pid=pid), switches)


def memory(pid: int) -> tuple[float, int]:
    """(RSS in MiB, threads) from /proc/<pid>/status."""
    values = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(values["VmRSS"].split()[0]) / 1024, int(values["Threads"])


async def measure(detector: str, seconds: float, settle: float, stages: str,
                  work: Path) -> tuple[float, float, float, int]:
    """(% of one core, wake-ups/s, RSS MiB, threads) of an idle daemon."""
    model = {"real": str(REAL_DETECTOR), "none": "",
             "tiny": str(write_tiny_detector(work / "tiny.onnx"))}[detector]
    run_stages = stages if detector != "none" else "watch,api,services"
    selection = [] if run_stages == "all" else ["--stages", run_stages]
    (work / "cameras" / "front").mkdir(parents=True, exist_ok=True)
    async with throwaway_stores() as (db_url, redis_url, _pool, _redis):
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
               "HSID_PATHS__CAMERA_ROOT": str(work / "cameras"),
               "HSID_PATHS__STATE_DIR": str(work / f"state-{detector}"),
               "HSID_API__PORT": str(PORT), "HSID_DETECTOR__MODEL": model,
               "HSID_ANALYZER__MODEL": "", "HSID_ENTITIES__MODEL": "",
               "HSID_LOGGING__LEVEL": "warning"}
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hsid", "run", *selection, env=env)
        try:
            await wait_healthy(f"http://127.0.0.1:{PORT}")
            await asyncio.sleep(settle)
            before = Reading.now(daemon.pid)
            await asyncio.sleep(seconds)
            after = Reading.now(daemon.pid)
            rss, threads = memory(daemon.pid)
        finally:
            daemon.terminate()
            await daemon.wait()
    elapsed = after.at - before.at
    return ((after.ticks - before.ticks) / CLOCK_TICKS / elapsed * 100,
            (after.switches - before.switches) / elapsed, rss, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--detector", choices=("real", "tiny", "none"),
                        default="real" if REAL_DETECTOR.exists() else "tiny")
    parser.add_argument("--stages", default="all")
    parser.add_argument("--compare-rss", action="store_true",
                        help="also start a daemon without models and print its RSS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsid-idle-") as tmp:
        cpu, wakeups, rss, threads = asyncio.run(
            measure(args.detector, args.seconds, args.settle, args.stages, Path(tmp)))
        verdict = "meets" if cpu < TARGET_PERCENT else "MISSES"
        print(f"idle {args.seconds:.0f} s, detector {args.detector}, no LLM, stages "
              f"{args.stages}: CPU {cpu:.2f}% of one core ({verdict} the {TARGET_PERCENT}% "
              f"bar), {wakeups:.0f} wake-ups/s, RSS {rss:.0f} MiB, {threads} threads")
        if args.compare_rss:
            _, _, bare, bare_threads = asyncio.run(
                measure("none", 5.0, 2.0, "watch,api,services", Path(tmp)))
            print(f"without models (watch,api,services): RSS {bare:.0f} MiB, "
                  f"{bare_threads} threads")


if __name__ == "__main__":
    main()
