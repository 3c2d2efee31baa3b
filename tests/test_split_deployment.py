"""The split deployment end to end: two real `hsid run --stages ...` processes on one
PostgreSQL and one Redis, the watcher and API in one, detection, analysis and services in the
other. Every upload is detected once and every detection lands in exactly one event, which
the first process's API serves; a kill -9 of either process, while images keep arriving,
loses and duplicates nothing."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import asyncpg
import cv2
import numpy as np
import redis.asyncio as aioredis

from tests.conftest import free_port
from tests.support import Daemon, eventually, http_json, wait_for
from tests.test_daemon import daemon_env

RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR: the tiny detector sees a person, a car


def image(index: int, kinds: tuple[str, ...]) -> bytes:
    """A distinct 720p JPEG: a red patch per "person", a blue one per "car", shifted by
    `index` so that no two uploads share their content."""
    pixels = np.full((720, 1280, 3), 128, np.uint8)
    shift = 7 * index
    for kind in kinds:
        if kind == "person":
            pixels[100:500, 100 + shift:300 + shift] = RED
        else:
            pixels[300:500, 700 + shift:1000 + shift] = BLUE
    ok, data = cv2.imencode(".jpg", pixels)
    assert ok
    return data.tobytes()


def upload(path: Path, data: bytes) -> None:
    """FTP fashion: written under a temporary name, then renamed into place."""
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.rename(temporary, path)


class Split:
    """The two processes of the deployment, restartable; every log kept for failures."""

    def __init__(self, tmp_path: Path, env: dict[str, str], port: int) -> None:
        self.tmp_path, self.env, self.port = tmp_path, env, port
        self.logs: list[Daemon] = []
        self.front = self.start("front", "watch,api")
        self.back = self.start("back", "detect,analyze,services")

    def start(self, name: str, stages: str) -> Daemon:
        daemon = Daemon(self.env, ["run", "--stages", stages],
                        self.tmp_path / f"{name}-{len(self.logs)}.log")
        self.logs.append(daemon)
        return daemon

    def output(self) -> str:
        return "\n".join(f"--- {d.log_path.name}\n{d.output()[-4000:]}" for d in self.logs)

    def wait_front(self) -> None:
        wait_for(lambda: http_json(f"http://127.0.0.1:{self.port}/api/system/health")[0] == 200,
                 timeout=30)

    def wait_back(self) -> None:
        back = self.back
        wait_for(lambda: "hsid_ready" in back.output() or back.process.poll() is not None,
                 timeout=30)
        assert back.process.poll() is None, self.output()

    @staticmethod
    def kill(daemon: Daemon) -> None:
        daemon.process.kill()  # SIGKILL: no draining, no clean-up
        daemon.process.wait()
        daemon.stop()  # closes its log

    def stop(self) -> None:
        for daemon in (self.back, self.front):
            assert daemon.stop() == 0, self.output()


async def settled(conn: asyncpg.Connection, uploads: int) -> bool:
    """Every upload has its snapshot row and every detection is in an event."""
    snapshots = await conn.fetchval("SELECT count(*) FROM snapshots")
    detections = {r["id"] for r in await conn.fetch("SELECT id FROM detections")}
    in_events = {i for r in await conn.fetch("SELECT detection_ids FROM events")
                 for i in json.loads(r["detection_ids"] or "[]")}
    return snapshots >= uploads and detections <= in_events


async def test_split_processes_detect_every_upload_once_and_survive_kill_9(
    tmp_path: Path, fresh_database_url: str, redis_url: str, redis_prefix: str,
    redis: aioredis.Redis, camera_root: Path, state_dir: Path, test_models: dict[str, Path],
) -> None:
    # `redis` (flushed) keeps other tests' dedupe keys and queues out of this one.
    port = free_port()
    env = daemon_env(fresh_database_url, redis_url, redis_prefix, camera_root, state_dir,
                     port, **{
        "HSID_DETECTOR__MODEL": str(test_models["detector"]),
        "HSID_ANALYZER__MODEL": "",
        "HSID_BATCH__WINDOW_SECONDS": "2", "HSID_BATCH__IDLE_SECONDS": "0.5",
        "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.1",
        "HSID_QUEUES__RETRY_BASE_SECONDS": "0.1",
    })
    cameras = [camera_root / "Front Door", camera_root / "garage"]
    for camera in cameras:
        camera.mkdir()
    expected: dict[str, tuple[str, ...]] = {}  # file path -> object types it shows

    def send(index: int) -> None:
        kinds = (("person",), ("car",), ("person", "car"))[index % 3]
        path = cameras[index % 2] / f"snap-{index:03d}.jpg"
        upload(path, image(index, kinds))
        expected[str(path)] = kinds

    split = Split(tmp_path, env, port)
    conn: asyncpg.Connection | None = None
    try:
        split.wait_front()  # the front applies the schema; the back waits for nothing
        split.wait_back()
        conn = await asyncpg.connect(fresh_database_url)

        # 1. Ten uploads across two cameras, both processes up.
        for index in range(10):
            send(index)
        await eventually(lambda: settled(conn, len(expected)), within=30,
                         what=f"10 uploads processed\n{split.output()}")
        _, events = http_json(f"http://127.0.0.1:{port}/api/events?limit=100")
        _, detections = http_json(f"http://127.0.0.1:{port}/api/detections?limit=100")
        assert events["count"] >= 2 and len(events["items"]) == events["count"], events
        served = {d["id"] for d in detections["items"]}
        assert len(served) == detections["count"] == sum(map(len, expected.values()))
        assert {i for e in events["items"] for i in e["detection_ids"]} == served

        # 2. The detection process killed -9 while uploads keep arriving, then restarted.
        for index in range(10, 16):
            send(index)
            if index == 11:
                await eventually(lambda: conn.fetchval(
                    "SELECT count(*) > 10 FROM snapshots"), within=10, what="B busy")
                Split.kill(split.back)
        split.back = split.start("back", "detect,analyze,services")
        split.wait_back()
        await eventually(lambda: settled(conn, len(expected)), within=30,
                         what=f"uploads processed after kill -9 of B\n{split.output()}")

        # 3. The watcher/API process killed -9 while uploads keep arriving, then restarted:
        # what arrived while it was down is found by its start-up scan.
        for index in range(16, 22):
            send(index)
            if index == 17:
                Split.kill(split.front)
        split.front = split.start("front", "watch,api")
        split.wait_front()
        await eventually(lambda: settled(conn, len(expected)), within=30,
                         what=f"uploads processed after kill -9 of A\n{split.output()}")

        snapshots = await conn.fetch("SELECT * FROM snapshots")
        rows = await conn.fetch("SELECT id, file_path, object_type FROM detections")
        event_rows = await conn.fetch("SELECT id, detection_ids FROM events")
        _, events = http_json(f"http://127.0.0.1:{port}/api/events?limit=100")
        _, detections = http_json(f"http://127.0.0.1:{port}/api/detections?limit=100")
    finally:
        if conn is not None:
            await conn.close()
        split.stop()

    # One snapshot row per upload, each processed.
    assert sorted(r["file_path"] for r in snapshots) == sorted(expected), split.output()
    assert {r["outcome"] for r in snapshots} == {"processed"}
    # Each image's detections exactly once: no image lost, none read twice.
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["file_path"], []).append(row["object_type"])
    assert {p: sorted(k) for p, k in found.items()} == {
        p: sorted(k) for p, k in expected.items()}, split.output()
    # Every detection in exactly one event.
    membership = Counter(i for r in event_rows for i in json.loads(r["detection_ids"]))
    assert membership == Counter({r["id"]: 1 for r in rows}), split.output()
    # The restarted front's API serves them all.
    assert {e["id"] for e in events["items"]} == {r["id"] for r in event_rows}
    assert events["count"] == len(event_rows)
    assert {d["id"] for d in detections["items"]} == {r["id"] for r in rows}
    assert detections["count"] == len(rows) == sum(map(len, expected.values()))
