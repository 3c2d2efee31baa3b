"""Shared pieces of the benchmarks: throwaway stores, test images, a realistic detector model."""

from __future__ import annotations

import asyncio
import os
import statistics
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import cv2
import numpy as np
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from hsid.core.config import Config
from hsid.core.db import apply_schema, create_pool

PG_ADMIN_URL = os.environ.get("HSID_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HSID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# The steps hsid_stage_seconds measures (hsid/core/metrics.py).
STEPS = ("decode", "inference", "database", "llm", "embedding")
# Those of them the detect worker measures per image, thumbnails included.
WORKER_STEPS = ("decode", "inference", "database", "thumbnails")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@asynccontextmanager
async def throwaway_stores() -> AsyncIterator[tuple[str, str, asyncpg.Pool, aioredis.Redis]]:
    """A fresh database with the schema and a flushed Redis database; removed afterwards."""
    name = f"hsid_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    pool = await create_pool(Config().database, url)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await apply_schema(pool)
        await redis.flushdb()
        yield url, REDIS_URL, pool, redis
    finally:
        await redis.flushdb()
        await redis.aclose()
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def scene_jpeg(path: Path, seed: int, size: tuple[int, int] = (1920, 1080)) -> Path:
    """A 1080p JPEG that compresses like a camera frame (texture, not a flat colour), with a
    red "person" patch and a blue "car" patch that the tiny model finds."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.integers(60, 200, (height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 12, image.shape, dtype=np.uint8))
    x, y = int(rng.integers(0, width - 400)), int(rng.integers(0, height - 500))
    image[y:y + 400, x:x + 150] = (0, 0, 255)
    image[height - 300:height - 100, 200:700] = (255, 0, 0)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def realistic_detector(cache: Path) -> Path | None:
    """A random-weight RT-DETRv2 R18 exported to ONNX (Hugging Face interface), when torch
    and transformers are installed; None otherwise. Speed is realistic, detections are not.
    Built once and kept in `cache`."""
    target = cache / "rtdetrv2-r18-random.onnx"
    if target.exists():
        return target
    try:
        import torch
        from transformers import RTDetrResNetConfig, RTDetrV2Config, RTDetrV2ForObjectDetection
    except ImportError:
        return None
    backbone = RTDetrResNetConfig(
        depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic",
        embedding_size=64, out_features=["stage2", "stage3", "stage4"])
    config = RTDetrV2Config(
        backbone_config=backbone, encoder_in_channels=[128, 256, 512], encoder_hidden_dim=256,
        encoder_ffn_dim=1024, encoder_layers=1, encoder_attention_heads=8,
        hidden_expansion=0.5, encode_proj_layers=[2], feat_strides=[8, 16, 32], d_model=256,
        decoder_layers=3, decoder_ffn_dim=1024, decoder_attention_heads=8,
        decoder_n_points=4, num_feature_levels=3, num_queries=300, num_labels=80)
    torch.manual_seed(0)
    model = RTDetrV2ForObjectDetection(config).eval()

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(pixel_values=pixel_values)
            return out.logits, out.pred_boxes

    cache.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Exported(), (torch.zeros(1, 3, 640, 640),), str(target), dynamo=False, opset_version=17,
        input_names=["pixel_values"], output_names=["logits", "pred_boxes"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"},
                      "pred_boxes": {0: "batch"}})
    return target


async def poll_until(probe: Callable[[], Awaitable[bool]], interval: float = 0.005) -> None:
    """Wait for state another task or process changes (Redis lists), checking often."""
    while not await probe():  # noqa: ASYNC110 - the state lives in Redis, not in this process
        await asyncio.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def frame(seed: int, person: bool) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (45, 80, 3), dtype=np.uint8)
    image = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_CUBIC)
    x = int(rng.integers(0, 1000))
    image[200:600, x:x + 150] = (0, 0, 255) if person else (255, 0, 0)
    return cv2.imencode(".jpg", image)[1].tobytes()


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


async def stage_shares(base: str) -> dict[str, tuple[float, float]]:
    """step -> (seconds in all, observations): images for decode and inference, embedded
    detections for embedding."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    stats: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "hsid_stage_seconds":
            for sample in family.samples:
                step = sample.labels.get("step")
                if step in STEPS and sample.name.endswith(("_sum", "_count")):
                    index = 0 if sample.name.endswith("_sum") else 1
                    stats.setdefault(step, [0.0, 0.0])[index] = sample.value
    return {step: (values[0], values[1]) for step, values in stats.items()}


def stage_totals() -> dict[str, tuple[float, float]]:
    """step -> (seconds in all, observations) of hsid_stage_seconds in this process, for
    every step in WORKER_STEPS ((0, 0) for one never observed)."""
    from hsid.core import metrics

    def value(name: str, step: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, {"step": step}) or 0.0

    return {step: (value("hsid_stage_seconds_sum", step), value("hsid_stage_seconds_count", step))
            for step in WORKER_STEPS}


def photo_copies(folders: list[Path], dest: Path, count: int) -> list[Path]:
    """`count` snapshots in `dest` made from the photos in `folders` (sorted, cycled): a
    repeat has bytes appended after the image's end, so it is a new upload (its own SHA256)
    with the same pixels, as a camera re-sending a frame with other trailing metadata."""
    photos = sorted(p for folder in folders for p in folder.iterdir()
                    if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SystemExit(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {folders}")
    copies = []
    for n in range(count):
        source = photos[n % len(photos)]
        repeat = n // len(photos)
        target = dest / f"{n:04d}_{source.stem}{source.suffix.lower()}"
        target.write_bytes(source.read_bytes() + (f"\0hsid-bench {repeat}".encode()
                                                  if repeat else b""))
        copies.append(target)
    return copies


# /proc/<pid>/stat counts CPU time in clock ticks of this many per second.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_ticks(names: tuple[str, ...] = (), pid: int | None = None) -> int:
    """CPU clock ticks (user + system, all threads) of process `pid`, or of every process
    whose name starts with one of `names` (all users), from /proc/<pid>/stat."""
    total = 0
    for proc in [Path(f"/proc/{pid}")] if pid else Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if pid or stat[stat.index("(") + 1:stat.rindex(")")].startswith(names):
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total
