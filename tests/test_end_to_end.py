"""End to end: the real daemon with the tiny models, images uploaded in pieces, events on the
WebSocket and in the database, and the alert a rule raises delivered to a webhook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import asyncpg
import cv2
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.support import Daemon, http_json, wait_for
from tests.test_daemon import daemon_env


def jpeg(patches: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]]) -> bytes:
    image = np.full((720, 1280, 3), 128, np.uint8)
    for (x0, y0, x1, y1), colour in patches:
        image[y0:y1, x0:x1] = colour
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def scraped(text: str) -> dict[tuple[str, str], float]:
    """Samples of the exposition, keyed by (sample name, its one label's value)."""
    return {(sample.name, next(iter(sample.labels.values()), "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def upload_in_pieces(path: Path, data: bytes, pieces: int = 3, pause: float = 0.3) -> None:
    """Write the way an FTP server does: the file grows in chunks with pauses between."""
    size = -(-len(data) // pieces)
    with path.open("wb") as file:
        for start in range(0, len(data), size):
            file.write(data[start:start + size])
            file.flush()
            await asyncio.sleep(pause)


async def next_message(ws: aiohttp.ClientWebSocketResponse, kind: str, within: float) -> dict:
    async with asyncio.timeout(within):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            body = json.loads(message.data)
            if body["type"] == kind:
                return body


async def webhook_receiver(received: asyncio.Queue[dict]) -> TestServer:
    """A local stand-in for the user's webhook endpoint."""
    async def receive(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest.mark.parametrize("llm", [False, True], ids=["rules", "tiny-llm"])
async def test_uploaded_images_become_events_on_the_websocket_and_in_the_database(
    tmp_path: Path, fresh_database_url: str, redis_url: str, redis_prefix: str,
    redis: aioredis.Redis, camera_root: Path, state_dir: Path, test_models: dict[str, Path],
    llm: bool,
) -> None:
    # `redis` (flushed) keeps the other case's dedupe keys from hiding these images.
    port = free_port()
    camera = camera_root / "Front Door"
    camera.mkdir()
    hooks: asyncio.Queue[dict] = asyncio.Queue()
    receiver = await webhook_receiver(hooks)
    env = daemon_env(fresh_database_url, redis_url, redis_prefix, camera_root, state_dir,
                     port, **{
        "HSID_DETECTOR__MODEL": str(test_models["detector"]),
        "HSID_ANALYZER__MODEL": str(test_models["llm"]) if llm else "",
        "HSID_BATCH__WINDOW_SECONDS": "3", "HSID_BATCH__IDLE_SECONDS": "1",
        "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2",
        "HSID_ALERTS__WEBHOOK_URL": str(receiver.make_url("/hook")),
        "HSID_ALERTS__POLL_SECONDS": "0.2",
    })
    daemon = Daemon(env, ["run"], tmp_path / "daemon.log")
    try:
        wait_for(lambda: http_json(f"http://127.0.0.1:{port}/api/system/health")[0] == 200,
                 timeout=60)
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{port}/ws/events") as ws:
            async with session.post(f"http://127.0.0.1:{port}/api/alert-rules", json={
                    "name": "Person", "severity": "high", "object_types": ["person"],
                    "channels": ["webhook"]}) as response:
                assert response.status == 201
            # A person at 0.95: the fast path, its own event at once.
            await upload_in_pieces(camera / "person.jpg", jpeg([((100, 100, 300, 500),
                                                                 (0, 0, 255))]))
            fast = await next_message(ws, "event", within=30)
            async with asyncio.timeout(30):
                hook = await hooks.get()
            # Two cars: batched together, closed when the camera goes idle.
            await upload_in_pieces(camera / "car1.jpg", jpeg([((600, 300, 900, 500),
                                                               (255, 0, 0))]))
            await upload_in_pieces(camera / "car2.jpg", jpeg([((620, 300, 920, 500),
                                                               (255, 0, 0))]))
            batched = await next_message(ws, "event", within=30)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = scraped(await response.text())
    finally:
        assert daemon.stop() == 0, daemon.output()
        await receiver.close()
    assert fast["data"]["camera_id"] == batched["data"]["camera_id"] == "front_door"
    conn = await asyncpg.connect(fresh_database_url)
    try:
        events = {r["batch_id"]: r for r in await conn.fetch("SELECT * FROM events")}
        detections = {r["id"]: r for r in await conn.fetch("SELECT * FROM detections")}
        # The daemon's own log lines, with their context, reach the logs table too.
        logged = await conn.fetch("SELECT * FROM logs WHERE message = 'image_processed'")
        alerts = await conn.fetch("SELECT * FROM alerts")
    finally:
        await conn.close()
    fast_row, batched_row = events[fast["data"]["batch_id"]], events[batched["data"]["batch_id"]]
    assert fast_row["is_fast_path"] is True and batched_row["is_fast_path"] is False
    assert fast["data"]["risk_score"] == fast_row["risk_score"]
    [person_id] = json.loads(fast_row["detection_ids"])
    assert detections[person_id]["object_type"] == "person"
    assert detections[person_id]["file_path"] == str(camera / "person.jpg")
    car_ids = json.loads(batched_row["detection_ids"])
    assert sorted(Path(detections[i]["file_path"]).name for i in car_ids) == ["car1.jpg",
                                                                               "car2.jpg"]
    assert len(detections) == 3  # each image read once, though written in pieces
    assert {(r["camera_id"], r["component"], r["source"], r["level"]) for r in logged} == {
        ("front_door", "hsid.pipeline.detect_worker", "backend", "INFO")}
    assert metrics[("hsid_images_processed_total", "front_door")] == 3
    assert metrics[("hsid_images_received_total", "front_door")] == 3
    assert metrics[("hsid_detections_total", "person")] == 1
    assert metrics[("hsid_detections_total", "car")] == 2
    assert sum(v for (name, _), v in metrics.items() if name == "hsid_events_total") == 2
    # The person raised one alert (the cars match no rule), delivered to the webhook.
    [alert] = alerts
    assert (alert["event_id"], alert["status"]) == (fast_row["id"], "delivered")
    assert hook["type"] == "alert" and hooks.empty()
    assert hook["data"]["id"] == str(alert["id"])
    assert hook["data"]["event_id"] == fast_row["id"]
    assert hook["data"]["risk_score"] == fast_row["risk_score"]
    used_llm = "LLM was not used" not in fast_row["reasoning"]
    assert used_llm is llm, fast_row["reasoning"]
