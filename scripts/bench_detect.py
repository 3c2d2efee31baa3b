#!/usr/bin/env python3
"""Detect-worker throughput against bare onnxruntime on the same model, batch size and images.

    python scripts/bench_detect.py [--images 24] [--batch-size 1] [--threads N] [--model X.onnx]
                                   [--photos DIR ...] [--rounds 3]

The worker's figure covers the whole job: read, decode, resize, inference, database insert,
thumbnails, publish and batching, with the real PostgreSQL and Redis. The bare figure is
session.run alone on tensors prepared beforehand, on the providers the worker's detector
opened (a GPU's, where there is one). Both run in this process, one after the
other, so their ratio is comparable on a noisy machine. Without --model, a random-weight
RT-DETRv2 R18 is exported when torch and transformers are installed, else the tiny model.

--photos takes real photos (JPEG, PNG) from the folders given instead of synthetic 1080p
scenes: they are copied into the benchmark's camera folder, cycled to --images, and each
repeat gets a few bytes after the image's end so it is a new snapshot (its own content hash)
with the same pixels. Each round also prints the worker's time per image in each step
(hsid_stage_seconds: decode, inference, database, thumbnails), as milliseconds per image,
and of inference the model's own run (Detector.inference_fps, its last 32 runs): the steps
overlap, so their sum exceeds the time per image; inference slower than bare onnxruntime
is the cost of the work beside it on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    WORKER_STEPS,
    photo_copies,
    poll_until,
    realistic_detector,
    scene_jpeg,
    stage_totals,
    throwaway_stores,
)

from hsid.core.config import Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.logging import configure_logging
from hsid.core.queues import ReliableQueue
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline.batcher import Batcher
from hsid.pipeline.detect_worker import DetectWorker
from hsid.pipeline.detector import Detector, decode

CAMERA = "bench"


def bare_rate(detector: Detector, model: Path, images: list[Path], batch: int,
              threads: int) -> float:
    """Images per second of session.run alone, tensors prepared outside the timing."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=detector.providers)
    decoded = [decode(p.read_bytes(), 10**9) for p in images]
    feeds = []
    for start in range(0, len(decoded), batch):
        chunk = decoded[start:start + batch]
        tensor = np.stack([d.tensor for d in chunk])
        if detector.interface == "hf":
            feeds.append({"pixel_values": tensor})
        else:
            sizes = np.array([[d.width, d.height] for d in chunk], np.int64)
            feeds.append({"images": tensor, "orig_target_sizes": sizes})
    session.run(None, feeds[0])  # warm-up, as the worker's first job is
    started = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    return len(images) / (time.perf_counter() - started)


async def worker_rate(config: Config, detector: Detector,
                      images: list[Path]) -> tuple[float, int, dict[str, float]]:
    """Images per second through the real detect worker; also the detections stored and the
    milliseconds per image spent in each step (warm-up image included)."""
    async with throwaway_stores() as (_, _, pool, redis):
        await pool.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, $1, $2)",
                           CAMERA, str(images[0].parent))
        keyspace = Keyspace.from_config(config.redis)
        queue = ReliableQueue(redis, "detection_queue", "bench", config.queues,
                              keyspace=keyspace)
        for path in [images[0], *images]:  # the first is the warm-up, timed apart
            await queue.push({"camera_id": CAMERA, "file_path": str(path),
                              "timestamp": "2026-01-01T00:00:00.000000"})
        before = stage_totals()
        stopping = asyncio.Event()
        context = StageContext(config=config, pool=pool, redis=redis, keyspace=keyspace,
                               stopping=stopping)
        worker = DetectWorker(context, queue, detector, Batcher(config.batch, redis, keyspace))
        task = asyncio.create_task(worker.run())
        await poll_until(lambda: _llen_at_most(redis, queue.key, len(images) - 1))
        started = time.perf_counter()
        await poll_until(lambda: _all_done(redis, queue), interval=0.05)
        elapsed = time.perf_counter() - started
        stopping.set()
        await task
        after = stage_totals()
        stored = await pool.fetchval("SELECT count(*) FROM detections")
        split = {step: 1000 * (after[step][0] - before[step][0]) / (len(images) + 1)
                 for step in WORKER_STEPS}
        return len(images) / elapsed, stored, split


async def _llen_at_most(redis: aioredis.Redis, key: str, limit: int) -> bool:
    return int(await redis.llen(key)) <= limit


async def _all_done(redis: aioredis.Redis, queue: ReliableQueue) -> bool:
    return not (await redis.llen(queue.key) or await redis.llen(queue.processing_key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="model threads, both sides (default: half the cores, as the "
                             "daemon's detector.threads = 0 gives the detector)")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", type=Path, help="TensorRT engine cache (default: fresh)")
    parser.add_argument("--photos", type=Path, action="append", default=[],
                        help="a folder of real photos to use instead of synthetic scenes "
                             "(repeatable)")
    args = parser.parse_args()
    configure_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="hsid-bench-"))
    model = args.model or realistic_detector(Path.home() / ".cache" / "hsid-bench")
    model = model or write_tiny_detector(work / "tiny.onnx")
    folder = work / "cameras" / CAMERA
    folder.mkdir(parents=True)
    if args.photos:
        images = photo_copies(args.photos, folder, args.images)
        described = f"real photos from {', '.join(p.name for p in args.photos)}"
    else:
        images = [scene_jpeg(folder / f"{n:03d}.jpg", n) for n in range(args.images)]
        described = "1920x1080 JPEG"
    config = Config().with_overrides({
        "paths": {"camera_root": str(work / "cameras"), "state_dir": str(work / "state")},
        "detector": {"model": str(model), "batch_size": args.batch_size,
                     "threads": args.threads, "confidence": 0.5},
        "batch": {"fast_path_enabled": False},
    })
    detector = Detector(config.detector, args.engines or work / "engines")
    detector.load()
    print(f"model       {model.name} ({detector.interface}, {detector.provider})")
    print(f"images      {len(images)} x {described}, batch {args.batch_size}, "
          f"{args.threads} threads")
    ratios, bares, rates = [], [], []
    splits: dict[str, list[float]] = {step: [] for step in WORKER_STEPS}
    for round_ in range(1, args.rounds + 1):  # alternated, so drift hits both alike
        bare = bare_rate(detector, model, images, args.batch_size, args.threads)
        rate, stored, split = asyncio.run(worker_rate(config, detector, images))
        ratios.append(rate / bare)
        bares.append(bare)
        rates.append(rate)
        for step, ms in split.items():
            splits[step].append(ms)
        print(f"round {round_}     bare ORT {bare:6.2f} images/s, worker {rate:6.2f} images/s "
              f"({stored} detections stored): ratio {rate / bare:.3f}")
        print("            ms/image: " + ", ".join(f"{s} {ms:.1f}" for s, ms in split.items())
              + f" (of inference, the model's own run: {1000 / detector.inference_fps:.1f})")
    print(f"median      bare ORT {statistics.median(bares):6.2f} images/s, worker "
          f"{statistics.median(rates):6.2f} images/s")
    print("median      ms/image: " + ", ".join(
        f"{step} {statistics.median(values):.1f}" for step, values in splits.items()))
    print(f"ratio       median {statistics.median(ratios):.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
