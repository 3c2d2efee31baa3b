#!/usr/bin/env python3
"""The whole pipeline, end to end: N uploads through the running daemon to events.

    python scripts/bench_pipeline.py [--images 40] [--rate 4] [--llm smollm2|tiny|none]

Starts `hsid run` as a subprocess on throwaway stores with the tiny detector, short batch
timings (window 3 s, idle 1 s) and the chosen LLM, then uploads images into a camera
folder at --rate per second: every other image holds a "person" at 0.95 (fast path, one
event each), the rest a "car" (batched). Prints images/s, upload-to-event latency p50/p95
for fast-path and batched events (batched: from the first upload of the batch), and the
share of measured time spent in decode, inference, database and LLM (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import percentile, poll_until, throwaway_stores

from hsid.models.tiny_detector import write_tiny_detector
from hsid.models.tiny_llm import smollm2_path, write_tiny_gguf

CAMERA = "bench"
PORT = 18765
STEPS = ("decode", "inference", "database", "llm")


def frame(seed: int, person: bool) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (45, 80, 3), dtype=np.uint8)
    image = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_CUBIC)
    x = int(rng.integers(0, 1000))
    image[200:600, x:x + 150] = (0, 0, 255) if person else (255, 0, 0)
    return cv2.imencode(".jpg", image)[1].tobytes()


async def upload(folder: Path, count: int, rate: float) -> dict[str, float]:
    """Write images the way an FTP server does (temporary name, then rename); returns the
    time each upload completed, by final path."""
    done: dict[str, float] = {}
    for n in range(count):
        final = folder / f"{n:04d}.jpg"
        partial = folder / f".{n:04d}.jpg.part"
        partial.write_bytes(frame(n, person=n % 2 == 0))
        partial.rename(final)
        done[str(final)] = time.time()
        await asyncio.sleep(1 / rate)
    return done


async def collect_events(url: str, expected: int, seconds: float) -> dict[str, float]:
    """batch_id -> arrival time of its event on /ws/events."""
    arrived: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        try:
            async with asyncio.timeout(seconds):
                async for message in ws:
                    body = json.loads(message.data)
                    if body["type"] == "event":
                        arrived[body["data"]["batch_id"]] = time.time()
        except TimeoutError:
            pass
    return arrived


async def stage_shares(base: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    sums = {}
    for family in text_string_to_metric_families(text):
        if family.name == "hsid_stage_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum") and sample.labels.get("step") in STEPS:
                    sums[sample.labels["step"]] = sample.value
    return sums


async def measure(args: argparse.Namespace, work: Path, llm: Path | None) -> None:
    async with throwaway_stores() as (db_url, redis_url, pool, _):
        folder = work / "cameras" / CAMERA
        folder.mkdir(parents=True)
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
               "HSID_PATHS__CAMERA_ROOT": str(work / "cameras"),
               "HSID_PATHS__STATE_DIR": str(work / "state"), "HSID_API__PORT": str(PORT),
               "HSID_DETECTOR__MODEL": str(write_tiny_detector(work / "tiny.onnx")),
               "HSID_ANALYZER__MODEL": str(llm or ""), "HSID_LOGGING__LEVEL": "warning",
               "HSID_BATCH__WINDOW_SECONDS": "3", "HSID_BATCH__IDLE_SECONDS": "1",
               "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2"}
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "hsid", "run",
                                                      env=env)
        base = f"http://127.0.0.1:{PORT}"
        try:
            await wait_healthy(base)
            events = asyncio.create_task(collect_events(f"{base}/ws/events", args.images,
                                                        args.images / args.rate + 60))
            await asyncio.sleep(0.5)
            started = time.time()
            uploads = await upload(folder, args.images, args.rate)
            await wait_all_stored(pool, args.images)
            processed = time.time() - started
            arrived = await events
            shares = await stage_shares(base)
        finally:
            daemon.terminate()
            await daemon.wait()
        await report(pool, args, uploads, arrived, processed, shares, llm)


async def wait_healthy(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"{base}/api/system/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("daemon did not become healthy")


async def wait_all_stored(pool: asyncpg.Pool, count: int) -> None:
    async def stored() -> bool:
        query = "SELECT count(DISTINCT file_path) FROM detections"
        return int(await pool.fetchval(query)) >= count

    await poll_until(stored, interval=0.05)


async def report(pool: asyncpg.Pool, args: argparse.Namespace, uploads: dict[str, float],
                 arrived: dict[str, float], processed: float, shares: dict[str, float],
                 llm: Path | None) -> None:
    fast, batched = [], []
    for event in await pool.fetch("SELECT batch_id, detection_ids, is_fast_path FROM events"):
        if event["batch_id"] not in arrived:
            continue
        paths = await pool.fetch("SELECT file_path FROM detections WHERE id = any($1::int[])",
                                 json.loads(event["detection_ids"]))
        first_upload = min(uploads[p["file_path"]] for p in paths)
        latency = arrived[event["batch_id"]] - first_upload
        (fast if event["is_fast_path"] else batched).append(latency)
    total = sum(shares.values()) or 1.0
    print(f"llm          {llm.name if llm else 'none (rule-based)'}")
    print(f"images       {args.images} uploaded at {args.rate}/s; all stored after "
          f"{processed:.2f} s = {args.images / processed:.2f} images/s")
    for name, values in (("fast path", fast), ("batched", batched)):
        if values:
            print(f"{name:12} {len(values)} events, upload-to-event p50 "
                  f"{percentile(values, 50):.3f} s, p95 {percentile(values, 95):.3f} s")
    print("time share   " + ", ".join(f"{step} {shares.get(step, 0) / total:.1%} "
                                      f"({shares.get(step, 0):.2f} s)" for step in STEPS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rate", type=float, default=4.0, help="uploads per second")
    parser.add_argument("--llm", choices=("smollm2", "tiny", "none"), default="smollm2")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsid-pipeline-"))
    llm = {"smollm2": smollm2_path, "tiny": lambda: write_tiny_gguf(work / "tiny.gguf"),
           "none": lambda: None}[args.llm]()
    if args.llm == "smollm2" and llm is None:
        llm = write_tiny_gguf(work / "tiny.gguf")
    asyncio.run(measure(args, work, llm))


if __name__ == "__main__":
    main()
