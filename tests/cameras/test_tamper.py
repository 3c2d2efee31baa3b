"""Scene monitoring on synthetic views: covered, blinded and turned cameras are recorded once
confirmed and resolved when the view is back; a turned camera's new view is adopted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import cv2
import numpy as np
import pytest

from hsid.cameras import tamper as scene
from hsid.cameras.tamper import SceneMonitor, scene_context
from tests import seed

CAMERA = "gate"
T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)


def view(seed: int, offset: float = 0.0, jitter: int = 0, light: float = 1.0) -> np.ndarray:
    """A [3, 640, 640] model input of a textured scene (mean about 0.3) under `light`, with
    a little sensor noise that differs per snapshot."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((12, 12)).astype(np.float32)
    grey = 0.1 + 0.4 * cv2.resize(coarse, (640, 640), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(1000 + jitter).normal(0, 0.01 * light, grey.shape)
    grey = np.clip(grey * light + offset + noise, 0, 1).astype(np.float32)
    return np.stack([grey, grey, grey])


COVERED = np.full((3, 640, 640), 0.45, np.float32)


@pytest.fixture
async def monitor(db: asyncpg.Pool) -> SceneMonitor:
    await seed.camera(db, CAMERA, name="Gate")
    return SceneMonitor(db)


class Feed:
    """Snapshots for the monitor, one second apart."""

    def __init__(self, monitor: SceneMonitor) -> None:
        self.monitor, self.count = monitor, 0

    async def send(self, tensor: np.ndarray, times: int = 1) -> datetime:
        for _ in range(times):
            self.count += 1
            await self.monitor.observe(CAMERA, tensor, T0 + timedelta(seconds=self.count))
        return T0 + timedelta(seconds=self.count)

    async def normal(self, times: int, seed: int = 1) -> datetime:
        for _ in range(times):
            await self.send(view(seed, jitter=self.count))
        return T0 + timedelta(seconds=self.count)


async def _changes(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM scene_changes ORDER BY id")


async def test_a_covered_lens_is_recorded_once_confirmed_and_resolved_after(
    db: asyncpg.Pool, monitor: SceneMonitor,
) -> None:
    feed = Feed(monitor)
    await feed.normal(scene.LEARN_IMAGES + 10)
    await feed.send(COVERED, scene.CONFIRM_IMAGES - 1)
    assert await _changes(db) == []  # a passing truck fills one or two snapshots

    confirmed = await feed.send(COVERED)
    await feed.send(COVERED, 5)
    [change] = await _changes(db)
    assert (change["change_type"], change["severity"]) == ("obstruction", "high")
    assert change["detected_at"] == confirmed and change["resolved_at"] is None
    assert change["details"]["measured"]["contrast"] < change["details"]["usual"]["contrast"]
    assert await scene_context(db, CAMERA) == [
        f"Scene change on this camera since {confirmed.astimezone():%H:%M}: "
        "the view is blocked or blurred."]

    back = await feed.normal(scene.CONFIRM_IMAGES)
    [change] = await _changes(db)
    assert change["resolved_at"] == back
    assert change["details"]["resolution"] == "view back to normal"
    assert await scene_context(db, CAMERA) == []


async def test_normal_snapshots_never_raise_a_change(db: asyncpg.Pool,
                                                     monitor: SceneMonitor) -> None:
    feed = Feed(monitor)
    await feed.normal(60)
    assert await _changes(db) == []


async def test_a_blinding_light_is_a_lighting_change(
    db: asyncpg.Pool, monitor: SceneMonitor,
) -> None:
    feed = Feed(monitor)
    await feed.normal(scene.LEARN_IMAGES + 5)
    await feed.send(view(1, offset=0.9), scene.CONFIRM_IMAGES)
    [change] = await _changes(db)
    assert (change["change_type"], change["severity"]) == ("lighting", "medium")


async def test_the_same_scene_at_dusk_or_under_infrared_is_not_a_change(
    db: asyncpg.Pool, monitor: SceneMonitor,
) -> None:
    feed = Feed(monitor)
    await feed.normal(scene.LEARN_IMAGES + 5)
    for n in range(10):  # no snapshots while it got dark: the first one is already dim
        await feed.send(view(1, jitter=n, light=0.2))
    assert await _changes(db) == []


async def test_a_turned_camera_is_recorded_then_its_new_view_adopted(
    db: asyncpg.Pool, monitor: SceneMonitor,
) -> None:
    feed = Feed(monitor)
    await feed.normal(scene.LEARN_IMAGES + 5, seed=1)
    await feed.normal(scene.CONFIRM_IMAGES, seed=2)
    [change] = await _changes(db)
    assert change["change_type"] == "movement" and change["resolved_at"] is None

    adopted = await feed.normal(scene.ADOPT_IMAGES - scene.CONFIRM_IMAGES, seed=2)
    await feed.normal(20, seed=2)

    [change] = await _changes(db)
    assert change["resolved_at"] == adopted
    assert change["details"]["resolution"] == "new view adopted as the reference"


async def test_changes_left_open_by_an_earlier_run_are_resolved_as_unknown(
    db: asyncpg.Pool, monitor: SceneMonitor,
) -> None:
    await db.execute("INSERT INTO scene_changes (camera_id, change_type, severity, detected_at)"
                     " VALUES ($1, 'obstruction', 'high', $2)", CAMERA, T0 - timedelta(days=1))

    first = await Feed(monitor).send(view(1))

    [change] = await _changes(db)
    assert change["resolved_at"] == first
    assert change["details"] == {"resolution": "hsid restarted"}
