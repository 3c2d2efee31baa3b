"""`hsid run` with no store URLs: its own PostgreSQL and Redis, across stops and crashes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import asyncpg
import cv2
import numpy as np

from hsid.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import embedded_pids, free_port
from tests.support import Daemon, http_json, wait_for


def person_jpeg() -> bytes:
    image = np.full((480, 640, 3), 128, np.uint8)
    image[100:400, 100:200] = (0, 0, 255)
    return cv2.imencode(".jpg", image)[1].tobytes()


def start(embedded_dir: Path, models: dict[str, Path], port: int, log: str) -> Daemon:
    env = {"HSID_PATHS__CAMERA_ROOT": str(embedded_dir / "cameras"),
           "HSID_PATHS__STATE_DIR": str(embedded_dir / "state"),
           "HSID_API__PORT": str(port), "HSID_DETECTOR__MODEL": str(models["detector"])}
    daemon = Daemon(env, ["run"], embedded_dir / log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/api/system/health")[0] == 200
             or daemon.process.poll() is not None, timeout=90)
    assert daemon.process.poll() is None, daemon.output()
    return daemon


async def count_events(state: Path) -> int:
    conn = await asyncpg.connect(EmbeddedPostgres(state / "embedded" / "pg").dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


def servers(state: Path) -> list[int]:
    root = state / "embedded"
    return embedded_pids(EmbeddedPostgres(root / "pg")) + embedded_pids(
        EmbeddedRedis(root / "redis"))


async def test_embedded_stores_serve_the_pipeline_survive_restarts_and_crashes(
    embedded_dir: Path, test_models: dict[str, Path],
) -> None:
    camera = embedded_dir / "cameras" / "garden"
    camera.mkdir(parents=True)
    state, port = embedded_dir / "state", free_port()
    daemon = start(embedded_dir, test_models, port, "first.log")
    assert "embedded_store_started" in daemon.output()
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{port}/ws/events") as ws:
            (camera / "one.jpg").write_bytes(person_jpeg())
            async with asyncio.timeout(30):
                while json.loads((await ws.receive()).data)["type"] != "event":
                    pass
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert servers(state) == [], "servers outlived a clean stop"

    daemon = start(embedded_dir, test_models, port, "second.log")  # reuses the data
    assert await count_events(state) == 1
    daemon.process.send_signal(signal.SIGKILL)  # a crash: servers and pid files left behind
    daemon.process.wait(10)
    daemon.stop()

    daemon = start(embedded_dir, test_models, port, "third.log")  # recovers
    try:
        assert await count_events(state) == 1
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert servers(state) == []
