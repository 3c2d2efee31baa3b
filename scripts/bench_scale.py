#!/usr/bin/env python3
"""Many cameras at once: the largest number this machine sustains.

    python scripts/bench_scale.py [--cameras 4,8,16,32] [--seconds 40] [--warmup 5]
                                  [--person-share 0.2] [--embedder none|tiny]

For each N in --cameras, starts `hsid run` as a subprocess on throwaway stores with the tiny
detector and the rule-based scorer (no LLM), then has N cameras upload one snapshot a second
each, FTP fashion (a temporary dot name, then a rename), staggered evenly over the second.
Every snapshot is unique (a JPEG comment carries its number, so dedupe never drops one);
--person-share of them hold a "person" (the fast path), the rest a "car" (batched).

Prints, per N:
- sustained images/s (images stored in the measured window / its length);
- p50, p95 and p99 upload-to-detection-message latency, from the rename to the detection
  message on /ws/events (the API's WebSocket, as a client sees it);
- queue depth over time (detection and analysis queues, sampled once a second);
- database size per 10,000 detections (pg_database_size growth over the measured window,
  per detection stored in it; page-sized steps make short runs overstate it);
- CPU split: the daemon, PostgreSQL and redis-server in % of one core, read from /proc
  over the measured window, and the daemon's time by step (hsid_stage_seconds: decode,
  inference, database).

N is sustained when p95 < 2 s and the queue is stable: the detection queue's depth in the
last third of the window is no higher than in the first third plus N (one second's
uploads). The last line names the largest sustained N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    CLOCK_TICKS,
    frame,
    percentile,
    process_ticks,
    stage_shares,
    throwaway_stores,
    wait_healthy,
)

from hsid.core.config import Config
from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE
from hsid.core.keyspace import Keyspace
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_embedder import write_tiny_embedder

PORT = 18766
P95_LIMIT_SECONDS = 2.0  # the bar for "sustained"
DRAIN_SECONDS = 20.0  # after the last upload, how long late detection messages may arrive
FRAMES = 24  # distinct encoded pictures, made unique per upload by a JPEG comment


def unique(jpeg: bytes, number: int) -> bytes:
    """`jpeg` with a COM segment (JPEG marker 0xFFFE) holding `number` right after SOI."""
    text = f"hsid-bench {number}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


@dataclass
class Run:
    """What one N produced; filled by the uploader, the listener and the sampler."""

    uploaded: dict[str, float] = field(default_factory=dict)  # final path -> rename time
    announced: dict[str, float] = field(default_factory=dict)  # file_path -> message time
    depths: list[tuple[float, int, int]] = field(default_factory=list)  # t, detection, analysis


async def upload(root: Path, cameras: int, seconds: float, person_share: float,
                 run: Run) -> None:
    """Each camera uploads once a second for `seconds`, camera i at offset i/N of the second."""
    pictures = [frame(seed, person=seed < FRAMES * person_share) for seed in range(FRAMES)]
    folders = [root / f"cam{index:02d}" for index in range(cameras)]
    start = time.monotonic()
    for tick in range(int(seconds * cameras)):
        second, index = divmod(tick, cameras)
        delay = start + second + index / cameras - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        final = folders[index] / f"snap_{second:05d}.jpg"
        partial = folders[index] / f".snap_{second:05d}.jpg.part"
        partial.write_bytes(unique(pictures[tick % FRAMES], tick))
        partial.rename(final)
        run.uploaded[str(final)] = time.time()


async def listen(base: str, run: Run) -> None:
    """Detection messages from /ws/events until cancelled: file_path -> arrival time."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{base}/ws/events") as ws:
        async for message in ws:
            body = json.loads(message.data)
            if body.get("type") == "detection":
                run.announced.setdefault(body["data"]["file_path"], time.time())


async def sample_depths(redis: aioredis.Redis, keyspace: Keyspace, run: Run) -> None:
    """Queue depths once a second until cancelled."""
    detection, analysis = keyspace.queue(DETECTION_QUEUE), keyspace.queue(ANALYSIS_QUEUE)
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            depths = await pipe.llen(detection).llen(analysis).execute()
        run.depths.append((time.time(), int(depths[0]), int(depths[1])))
        await asyncio.sleep(1.0)


@dataclass(frozen=True)
class CpuReading:
    at: float
    daemon: int
    postgres: int
    redis: int

    @classmethod
    def now(cls, pid: int) -> CpuReading:
        return cls(time.monotonic(), process_ticks(pid=pid), process_ticks(("postgres",)),
                   process_ticks(("redis-server",)))


def cpu_split(before: CpuReading, after: CpuReading) -> dict[str, float]:
    """% of one core over the interval: the daemon, and the stores machine-wide (the bench's
    backends and any other client's). Python names no threads, so the daemon's own split is
    by step (hsid_stage_seconds), not by thread."""
    seconds = (after.at - before.at) * CLOCK_TICKS / 100
    return {"daemon": (after.daemon - before.daemon) / seconds,
            "postgres": (after.postgres - before.postgres) / seconds,
            "redis-server": (after.redis - before.redis) / seconds}


@dataclass(frozen=True)
class Figures:
    cameras: int
    images_per_second: float
    latencies: list[float]
    missing: int
    stable: bool
    depth_line: str
    bytes_per_10k: float | None
    cpu: dict[str, float]
    steps: dict[str, float]

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95) if self.latencies else float("inf")

    @property
    def sustained(self) -> bool:
        return self.p95 < P95_LIMIT_SECONDS and self.stable and self.missing == 0


def stability(depths: list[tuple[float, int, int]], cameras: int) -> tuple[bool, str]:
    """Whether the detection queue stayed level, and a one-line picture of both queues."""
    detection = [row[1] for row in depths]
    third = max(1, len(detection) // 3)
    stable = max(detection[-third:]) <= max(detection[:third]) + cameras
    picture = " ".join(f"{row[1]}/{row[2]}" for row in depths[:: max(1, len(depths) // 12)])
    return stable, picture


async def measure(cameras: int, args: argparse.Namespace, work: Path) -> Figures:
    root = work / f"n{cameras}" / "cameras"
    for index in range(cameras):
        (root / f"cam{index:02d}").mkdir(parents=True)
    embedder = write_tiny_embedder(work / "tiny_embedder.onnx") if args.embedder == "tiny" else ""
    async with throwaway_stores() as (db_url, redis_url, pool, redis):
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
               "HSID_PATHS__CAMERA_ROOT": str(root),
               "HSID_PATHS__STATE_DIR": str(work / f"n{cameras}" / "state"),
               "HSID_API__PORT": str(PORT),
               "HSID_DETECTOR__MODEL": str(write_tiny_detector(work / "tiny.onnx")),
               "HSID_ANALYZER__MODEL": "", "HSID_ENTITIES__MODEL": str(embedder),
               "HSID_LOGGING__LEVEL": "warning"}
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "hsid", "run",
                                                      env=env)
        base = f"http://127.0.0.1:{PORT}"
        run = Run()
        tasks: list[asyncio.Task[None]] = []
        try:
            await wait_healthy(base)
            tasks = [asyncio.create_task(listen(base, run)),
                     asyncio.create_task(sample_depths(redis, Keyspace.from_config(
                         Config().redis), run))]
            await asyncio.sleep(0.5)
            uploader = asyncio.create_task(upload(root, cameras, args.warmup + args.seconds,
                                                  args.person_share, run))
            await asyncio.sleep(args.warmup)
            window_start, cpu_before = time.time(), CpuReading.now(daemon.pid)
            stored_before = await _stored(pool)
            size_before, detections_before = await _database_size(pool), await _detections(pool)
            await uploader
            cpu_after, window_end = CpuReading.now(daemon.pid), time.time()
            stored_after = await _stored(pool)
            steps = await stage_shares(base)
            await _drain(run, window_start)
        finally:
            for task in tasks:
                task.cancel()
            daemon.terminate()
            await daemon.wait()
        detections = await _detections(pool) - detections_before
        growth = await _database_size(pool) - size_before
    measured = [path for path, at in run.uploaded.items() if at >= window_start]
    latencies = [run.announced[path] - run.uploaded[path] for path in measured
                 if path in run.announced]
    stable, picture = stability([row for row in run.depths if row[0] >= window_start],
                                cameras)
    return Figures(
        cameras=cameras,
        images_per_second=(stored_after - stored_before) / (window_end - window_start),
        latencies=latencies, missing=len(measured) - len(latencies), stable=stable,
        depth_line=picture,
        bytes_per_10k=growth / detections * 10_000 if detections else None,
        cpu=cpu_split(cpu_before, cpu_after),
        steps={step: seconds for step, (seconds, _) in steps.items() if seconds})


async def _drain(run: Run, since: float) -> None:
    """Until every upload of the window has its detection message, or DRAIN_SECONDS."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        if all(path in run.announced for path, at in run.uploaded.items() if at >= since):
            return
        await asyncio.sleep(0.2)


async def _stored(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(DISTINCT file_path) FROM detections"))


async def _detections(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM detections"))


async def _database_size(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT pg_database_size(current_database())"))


def report(figures: Figures) -> None:
    lat = figures.latencies
    verdict = "sustained" if figures.sustained else "NOT sustained"
    print(f"N={figures.cameras:<3} {figures.images_per_second:6.1f} images/s   "
          f"latency p50 {percentile(lat, 50) if lat else float('nan'):.3f} s, "
          f"p95 {figures.p95:.3f} s, p99 {percentile(lat, 99) if lat else float('nan'):.3f} s"
          f"   missing {figures.missing}   {verdict}")
    print(f"      queue depth (detection/analysis, over the window): {figures.depth_line}"
          f"   {'stable' if figures.stable else 'GROWING'}")
    size = (f"{figures.bytes_per_10k / 1e6:.1f} MB" if figures.bytes_per_10k is not None
            else "n/a")
    print(f"      database: {size} per 10,000 detections")
    print("      CPU (% of one core): " + ", ".join(f"{name} {value:.0f}"
                                                    for name, value in figures.cpu.items()))
    total = sum(figures.steps.values()) or 1.0
    print("      daemon time by step: " + ", ".join(
        f"{step} {seconds / total:.0%}" for step, seconds in figures.steps.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="4,8,16,32",
                        help="comma-separated camera counts, tried in order")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--person-share", type=float, default=0.2)
    parser.add_argument("--embedder", choices=("none", "tiny"), default="none")
    args = parser.parse_args()
    print(f"cpu cores {os.cpu_count()}, {args.seconds:.0f} s window after {args.warmup:.0f} s "
          f"warm-up, {args.person_share:.0%} person snapshots, tiny detector, rules, "
          f"entities {args.embedder}")
    best = 0
    with tempfile.TemporaryDirectory(prefix="hsid-scale-") as tmp:
        for cameras in (int(n) for n in args.cameras.split(",")):
            figures = asyncio.run(measure(cameras, args, Path(tmp)))
            report(figures)
            if figures.sustained:
                best = max(best, cameras)
    print(f"largest sustained N: {best or 'none'} (p95 < {P95_LIMIT_SECONDS:.0f} s, "
          f"stable queue, nothing missing)")


if __name__ == "__main__":
    main()
