#!/usr/bin/env python3
"""The whole pipeline, end to end: N uploads through the running daemon to events.

    python scripts/bench_pipeline.py [--images 40] [--rate 4] [--llm smollm2|tiny|none]
                                     [--embedder tiny|real|none] [--real-frames]

Starts `hsid run` as a subprocess on throwaway stores with the tiny detector, short batch
timings (window 3 s, idle 1 s) and the chosen LLM, then uploads images into a camera
folder at --rate per second: every other image holds a "person" at 0.95 (fast path, one
event each), the rest a "car" (batched). Prints images/s, upload-to-event latency p50/p95
for fast-path and batched events (batched: from the first upload of the batch), and the
share of measured time spent in decode, inference, database, LLM and entity embedding (from
/metrics), and what recognising entities costs: model time per embedded detection against
detection (inference) time per image. --embedder tiny builds the tiny test embedder, real
uses ../shared/real/models/mobilenetv2_bottle_embed.onnx (a real MobileNetV2, 224x224, where
that folder exists), none turns entities off. --real-frames uploads that folder's CCTV frames
(campus_*.jpg, pedestrians and parked vehicles) through its real detector instead of the tiny
detector's generated images, so the ratio is that of a real model pair.

    python scripts/bench_pipeline.py --scenario walk-past [--llm smollm2]

One person walking past: camera `bench` gets 60 person snapshots at one a second while camera
`yard` gets one car 10 s in (batch window 30 s, idle 5 s; an alert rule on people with no
cooldown). Prints events, LLM calls, alerts, and the yard's upload-to-event latency: how
long the other camera waits behind the walking person. Run it on two trees to compare.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    STEPS,
    frame,
    percentile,
    poll_until,
    stage_shares,
    throwaway_stores,
    wait_healthy,
)

from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_embedder import write_tiny_embedder
from hsid.model_files.tiny_llm import smollm2_path, write_tiny_gguf

CAMERA = "bench"
PORT = 18765
REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "real"
REAL_EMBEDDER = REAL_DIR / "models" / "mobilenetv2_bottle_embed.onnx"
REAL_DETECTOR = REAL_DIR / "models" / "yolov8n_rtdetr_iface.onnx"




def real_frames() -> list[bytes]:
    return [path.read_bytes() for path in sorted((REAL_DIR / "frames").glob("campus_*.jpg"))]


async def upload(folder: Path, count: int, rate: float,
                 frames: list[bytes] | None = None) -> dict[str, float]:
    """Write images the way an FTP server does (temporary name, then rename); returns the
    time each upload completed, by final path. `frames`: real images, in turn."""
    done: dict[str, float] = {}
    for n in range(count):
        final = folder / f"{n:04d}.jpg"
        partial = folder / f".{n:04d}.jpg.part"
        partial.write_bytes(frames[n % len(frames)] if frames else frame(n, person=n % 2 == 0))
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




async def measure(args: argparse.Namespace, work: Path, llm: Path | None,
                  embedder: Path | None) -> None:
    async with throwaway_stores() as (db_url, redis_url, pool, _):
        folder = work / "cameras" / CAMERA
        folder.mkdir(parents=True)
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
               "HSID_PATHS__CAMERA_ROOT": str(work / "cameras"),
               "HSID_PATHS__STATE_DIR": str(work / "state"), "HSID_API__PORT": str(PORT),
               "HSID_DETECTOR__MODEL": str(REAL_DETECTOR if args.real_frames
                                           else write_tiny_detector(work / "tiny.onnx")),
               "HSID_ANALYZER__MODEL": str(llm or ""), "HSID_LOGGING__LEVEL": "warning",
               "HSID_BATCH__WINDOW_SECONDS": "3", "HSID_BATCH__IDLE_SECONDS": "1",
               "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2",
               "HSID_ENTITIES__MODEL": str(embedder or "")}
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "hsid", "run",
                                                      env=env)
        base = f"http://127.0.0.1:{PORT}"
        try:
            await wait_healthy(base)
            events = asyncio.create_task(collect_events(f"{base}/ws/events", args.images,
                                                        args.images / args.rate + 60))
            await asyncio.sleep(0.5)
            started = time.time()
            uploads = await upload(folder, args.images, args.rate,
                                   real_frames() if args.real_frames else None)
            await wait_all_stored(pool, args.images)
            processed = time.time() - started
            arrived = await events
            stats = await stage_shares(base)
        finally:
            daemon.terminate()
            await daemon.wait()
        await report(pool, args, uploads, arrived, processed, stats, llm)


WALK_SNAPSHOTS = 60
CAR_AT = 10  # seconds into the walk
SECOND_CAMERA = "yard"


async def walk_past(work: Path, llm: Path | None) -> None:
    """The walk-past scenario (see the module docstring)."""
    async with throwaway_stores() as (db_url, redis_url, pool, _):
        folders = {name: work / "cameras" / name for name in (CAMERA, SECOND_CAMERA)}
        for folder in folders.values():
            folder.mkdir(parents=True)
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
               "HSID_PATHS__CAMERA_ROOT": str(work / "cameras"),
               "HSID_PATHS__STATE_DIR": str(work / "state"), "HSID_API__PORT": str(PORT),
               "HSID_DETECTOR__MODEL": str(write_tiny_detector(work / "tiny.onnx")),
               "HSID_ANALYZER__MODEL": str(llm or ""), "HSID_LOGGING__LEVEL": "warning",
               "HSID_BATCH__WINDOW_SECONDS": "30", "HSID_BATCH__IDLE_SECONDS": "5",
               "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2", "HSID_ENTITIES__MODEL": ""}
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "hsid", "run",
                                                      env=env)
        base = f"http://127.0.0.1:{PORT}"
        try:
            await wait_healthy(base)
            async with aiohttp.ClientSession() as session, session.post(
                    f"{base}/api/alert-rules", json={"name": "Person", "severity": "high",
                                                     "object_types": ["person"],
                                                     "cooldown_seconds": 0}) as response:
                assert response.status == 201, await response.text()
            arrived: dict[str, float] = {}
            listener = asyncio.create_task(listen(f"{base}/ws/events", arrived))
            await asyncio.sleep(0.5)
            car_uploaded = 0.0
            for n in range(WALK_SNAPSHOTS):
                (folders[CAMERA] / f".{n:04d}.part").write_bytes(frame(n, person=True))
                (folders[CAMERA] / f".{n:04d}.part").rename(folders[CAMERA] / f"{n:04d}.jpg")
                if n == CAR_AT:
                    (folders[SECOND_CAMERA] / "car.jpg").write_bytes(frame(1000, person=False))
                    car_uploaded = time.time()
                await asyncio.sleep(1.0)
            await wait_all_analysed(pool, WALK_SNAPSHOTS + 1)
            await asyncio.sleep(0.5)  # the last event's message
            listener.cancel()
            stats = await stage_shares(base)
        finally:
            daemon.terminate()
            await daemon.wait()
        rows = await pool.fetch("SELECT batch_id, camera_id, is_fast_path FROM events")
        yard = [arrived[row["batch_id"]] - car_uploaded for row in rows
                if row["camera_id"] == SECOND_CAMERA and row["batch_id"] in arrived]
        walk = [row for row in rows if row["camera_id"] == CAMERA]
        alerts = await pool.fetchval("SELECT count(*) FROM alerts")
        print(f"llm          {llm.name if llm else 'none (rule-based)'}")
        print(f"walk-past    {WALK_SNAPSHOTS} person snapshots at 1/s: {len(walk)} events "
              f"({sum(row['is_fast_path'] for row in walk)} fast path); "
              f"LLM calls {stats.get('llm', (0.0, 0.0))[1]:.0f} "
              f"({stats.get('llm', (0.0, 0.0))[0]:.1f} s); alerts {alerts}")
        print(f"second cam   1 car: upload-to-event {yard[0]:.1f} s" if yard
              else "second cam   no event")


async def listen(url: str, arrived: dict[str, float]) -> None:
    """batch_id -> arrival time of its event on /ws/events, until cancelled."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        async for message in ws:
            body = json.loads(message.data)
            if body["type"] == "event":
                arrived[body["data"]["batch_id"]] = time.time()


async def wait_all_analysed(pool: asyncpg.Pool, images: int) -> None:
    """Until every detection of `images` stored images is in an event."""
    async def done() -> bool:
        stored = await pool.fetchval("SELECT count(DISTINCT file_path) FROM detections")
        detections = await pool.fetchval("SELECT count(*) FROM detections")
        held = await pool.fetchval(
            "SELECT coalesce(sum(json_array_length(detection_ids::json)), 0) FROM events")
        return stored >= images and held >= detections

    await poll_until(done, interval=0.2)




async def wait_all_stored(pool: asyncpg.Pool, count: int) -> None:
    async def stored() -> bool:
        query = "SELECT count(DISTINCT file_path) FROM detections"
        return int(await pool.fetchval(query)) >= count

    await poll_until(stored, interval=0.05)


async def report(pool: asyncpg.Pool, args: argparse.Namespace, uploads: dict[str, float],
                 arrived: dict[str, float], processed: float,
                 stats: dict[str, tuple[float, float]], llm: Path | None) -> None:
    fast, batched = [], []
    for event in await pool.fetch("SELECT batch_id, detection_ids, is_fast_path FROM events"):
        if event["batch_id"] not in arrived:
            continue
        paths = await pool.fetch("SELECT file_path FROM detections WHERE id = any($1::int[])",
                                 json.loads(event["detection_ids"]))
        first_upload = min(uploads[p["file_path"]] for p in paths)
        latency = arrived[event["batch_id"]] - first_upload
        (fast if event["is_fast_path"] else batched).append(latency)
    shares = {step: seconds for step, (seconds, _) in stats.items()}
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
    entities = await pool.fetchval("SELECT count(DISTINCT entity_id) FROM entity_detections")
    print(f"entities     {args.embedder}: {entities} entities; "
          + embedding_cost(stats.get("embedding"), stats.get("inference")))


def embedding_cost(embedding: tuple[float, float] | None,
                   inference: tuple[float, float] | None) -> str:
    """Model time per embedded detection, as a ratio to detection time per image."""
    if not embedding or not embedding[1] or not inference or not inference[1]:
        return "no detection was embedded"
    per_detection, per_image = embedding[0] / embedding[1], inference[0] / inference[1]
    return (f"embedding {per_detection * 1000:.2f} ms per detection ({embedding[1]:.0f}), "
            f"detection {per_image * 1000:.2f} ms per image ({inference[1]:.0f}): "
            f"ratio {per_detection / per_image:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("stream", "walk-past"), default="stream")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rate", type=float, default=4.0, help="uploads per second")
    parser.add_argument("--llm", choices=("smollm2", "tiny", "none"), default="smollm2")
    parser.add_argument("--gguf", type=Path, help="this GGUF as the analyzer (overrides --llm)")
    parser.add_argument("--embedder", choices=("tiny", "real", "none"), default="tiny")
    parser.add_argument("--real-frames", action="store_true",
                        help="real CCTV frames through the real detector (../shared/real)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsid-pipeline-"))
    llm = {"smollm2": smollm2_path, "tiny": lambda: write_tiny_gguf(work / "tiny.gguf"),
           "none": lambda: None}[args.llm]()
    if args.llm == "smollm2" and llm is None:
        llm = write_tiny_gguf(work / "tiny.gguf")
    if args.gguf is not None:
        llm = args.gguf
    if args.scenario == "walk-past":
        asyncio.run(walk_past(work, llm))
        return
    if args.embedder == "real" and not REAL_EMBEDDER.is_file():
        raise SystemExit(f"--embedder real: {REAL_EMBEDDER} does not exist")
    if args.real_frames and not (REAL_DETECTOR.is_file() and real_frames()):
        raise SystemExit(f"--real-frames: no detector or frames in {REAL_DIR}")
    embedder = {"tiny": lambda: write_tiny_embedder(work / "tiny-embedder.onnx"),
                "real": lambda: REAL_EMBEDDER, "none": lambda: None}[args.embedder]()
    asyncio.run(measure(args, work, llm, embedder))


if __name__ == "__main__":
    main()
