#!/usr/bin/env python3
"""Detect-worker throughput against bare onnxruntime on the same model, batch size and images.

    python scripts/bench_detect.py [--images 24] [--batch-size 1] [--threads 2] [--model X.onnx]

The worker's figure covers the whole job: read, decode, resize, inference, database insert,
thumbnails, publish and batching, with the real PostgreSQL and Redis. The bare figure is
session.run alone on tensors prepared beforehand, on the providers the worker's detector
opened (a GPU's, where there is one). Both run in this process, one after the
other, so their ratio is comparable on a noisy machine. Without --model, a random-weight
RT-DETRv2 R18 is exported when torch and transformers are installed, else the tiny model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import poll_until, realistic_detector, scene_jpeg, throwaway_stores

from hsid.core.config import Config
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


async def worker_rate(config: Config, detector: Detector, images: list[Path]) -> tuple[float, int]:
    """Images per second through the real detect worker; also the detections stored."""
    async with throwaway_stores() as (_, _, pool, redis):
        await pool.execute("INSERT INTO cameras (id, name, folder_path) VALUES ($1, $1, $2)",
                           CAMERA, str(images[0].parent))
        keyspace = Keyspace.from_config(config.redis)
        queue = ReliableQueue(redis, "detection_queue", "bench", config.queues,
                              keyspace=keyspace)
        for path in [images[0], *images]:  # the first is the warm-up, timed apart
            await queue.push({"camera_id": CAMERA, "file_path": str(path),
                              "timestamp": "2026-01-01T00:00:00.000000"})
        stopping = asyncio.Event()
        worker = DetectWorker(config, pool, redis, queue, detector,
                              Batcher(config.batch, redis, keyspace), stopping, keyspace=keyspace)
        task = asyncio.create_task(worker.run())
        await poll_until(lambda: _llen_at_most(redis, queue.key, len(images) - 1))
        started = time.perf_counter()
        await poll_until(lambda: _all_done(redis, queue), interval=0.05)
        elapsed = time.perf_counter() - started
        stopping.set()
        await task
        stored = await pool.fetchval("SELECT count(*) FROM detections")
        return len(images) / elapsed, stored


async def _llen_at_most(redis: aioredis.Redis, key: str, limit: int) -> bool:
    return int(await redis.llen(key)) <= limit


async def _all_done(redis: aioredis.Redis, queue: ReliableQueue) -> bool:
    return not (await redis.llen(queue.key) or await redis.llen(queue.processing_key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", type=Path, help="TensorRT engine cache (default: fresh)")
    args = parser.parse_args()
    configure_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="hsid-bench-"))
    model = args.model or realistic_detector(Path.home() / ".cache" / "hsid-bench")
    model = model or write_tiny_detector(work / "tiny.onnx")
    folder = work / "cameras" / CAMERA
    folder.mkdir(parents=True)
    images = [scene_jpeg(folder / f"{n:03d}.jpg", n) for n in range(args.images)]
    config = Config().with_overrides({
        "paths": {"camera_root": str(work / "cameras"), "state_dir": str(work / "state")},
        "detector": {"model": str(model), "batch_size": args.batch_size,
                     "threads": args.threads, "confidence": 0.5},
        "batch": {"fast_path_enabled": False},
    })
    detector = Detector(config.detector, args.engines or work / "engines")
    detector.load()
    print(f"model       {model.name} ({detector.interface}, {detector.provider})")
    print(f"images      {len(images)} x 1920x1080 JPEG, batch {args.batch_size}, "
          f"{args.threads} threads")
    ratios = []
    for round_ in range(1, args.rounds + 1):  # alternated, so drift hits both alike
        bare = bare_rate(detector, model, images, args.batch_size, args.threads)
        rate, stored = asyncio.run(worker_rate(config, detector, images))
        ratios.append(rate / bare)
        print(f"round {round_}     bare ORT {bare:6.2f} images/s, worker {rate:6.2f} images/s "
              f"({stored} detections stored): ratio {rate / bare:.3f}")
    print(f"ratio       median {statistics.median(ratios):.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
