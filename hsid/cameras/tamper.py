"""Scene monitoring: notices when a camera's view is covered, blinded or turned away
(tamper), records it in scene_changes, and closes it once the view is back.

Each snapshot is reduced to a 64x64 grey thumbnail (from the model's input, so it costs well
under a millisecond) and compared with the camera's reference view, which is learned from its
first LEARN_IMAGES snapshots and then follows slow change (daylight, seasons) as a moving
average of the snapshots that look normal. Contrast and detail are measured relative to the
mean brightness, so the same scene at dusk or under infrared still looks like itself. A
snapshot is
- a lighting change when it is nearly all black or all white (mean under DARK or over BRIGHT)
  and its brightness moved by more than 0.4 on a 0-1 scale (a torch in the lens, lights cut;
  a camera without night vision reports one at nightfall): severity medium;
- an obstruction when its relative contrast or detail falls under a quarter of the
  reference's (a covered or sprayed lens, a blurred view): severity high;
- a movement when its structure no longer correlates with the reference (correlation under
  0.3): the camera was turned; severity medium.
A change is recorded after CONFIRM_IMAGES such snapshots in a row (a truck passing close by
fills one or two), and resolved after CONFIRM_IMAGES normal ones. A turned camera that stays
turned for ADOPT_IMAGES snapshots has its new view adopted as the reference, and the change
is resolved saying so. The thresholds are heuristics; the details column keeps the measured
values so they can be tuned.

The state is in memory, per process: after a restart the reference is learned again, and
changes left open are resolved as "hsid restarted", since their view is no longer known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo

import asyncpg
import cv2
import numpy as np
import structlog

log = structlog.get_logger(__name__)

THUMB = 64
LEARN_IMAGES = 5
CONFIRM_IMAGES = 3
ADOPT_IMAGES = 20
FOLLOW_RATE = 0.05  # the weight of a normal snapshot in the reference
OBSTRUCTED_FRACTION = 0.25
LIGHTING_SHIFT = 0.4
DARK, BRIGHT = 0.03, 0.97
MIN_BRIGHTNESS = 0.02  # relative measures divide by the brightness, never by ~0
MOVED_CORRELATION = 0.3
SEVERITY = {"obstruction": "high", "lighting": "medium", "movement": "medium"}
DESCRIPTIONS = {
    "obstruction": "the view is blocked or blurred",
    "lighting": "the lighting changed abruptly (blinded or lights cut)",
    "movement": "the camera points somewhere else than it used to",
}

INSERT_CHANGE = """
INSERT INTO scene_changes (camera_id, change_type, severity, detected_at, details)
VALUES ($1, $2, $3, $4, $5) RETURNING id
"""
RESOLVE_CHANGE = "UPDATE scene_changes SET resolved_at = $2, details = details || $3 WHERE id = $1"
RESOLVE_LEFT_OPEN = """
UPDATE scene_changes SET resolved_at = $2, details = coalesce(details, '{}') || $3
WHERE camera_id = $1 AND resolved_at IS NULL
"""
SELECT_OPEN = """
SELECT change_type, detected_at FROM scene_changes
WHERE camera_id = $1 AND resolved_at IS NULL ORDER BY detected_at
"""


@dataclass(frozen=True, slots=True)
class Measures:
    brightness: float  # mean, 0..1
    contrast: float  # standard deviation / brightness
    detail: float  # mean absolute Laplacian / brightness
    correlation: float  # with the reference view, -1..1

    def as_details(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in self.__slots__}


def thumbnail(tensor: np.ndarray) -> np.ndarray:
    """64x64 grey, 0..1, from the model's [3, 640, 640] RGB input (green stands in for
    luminance)."""
    return cv2.resize(tensor[1], (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def measure(view: np.ndarray, reference: np.ndarray) -> Measures:
    centred, ref = view - view.mean(), reference - reference.mean()
    scale = float(np.sqrt((centred**2).sum() * (ref**2).sum()))
    correlation = float((centred * ref).sum() / scale) if scale > 1e-9 else 0.0
    brightness = float(view.mean())
    scale_by = max(brightness, MIN_BRIGHTNESS)
    return Measures(brightness, float(view.std()) / scale_by, _detail(view) / scale_by,
                    correlation)


def classify(now: Measures, usual: Measures) -> str | None:
    """The kind of change `now` shows against the reference's own measures, or None."""
    extreme = now.brightness < DARK or now.brightness > BRIGHT
    if extreme and abs(now.brightness - usual.brightness) > LIGHTING_SHIFT:
        return "lighting"
    if (now.contrast < OBSTRUCTED_FRACTION * usual.contrast
            or now.detail < OBSTRUCTED_FRACTION * usual.detail):
        return "obstruction"
    if now.correlation < MOVED_CORRELATION:
        return "movement"
    return None


def _detail(view: np.ndarray) -> float:
    """Mean absolute Laplacian: edges and texture, gone in a blurred or covered view."""
    return float(np.abs(cv2.Laplacian(view, cv2.CV_32F)).mean())


@dataclass
class _CameraScene:
    learned: list[np.ndarray] = field(default_factory=list)
    reference: np.ndarray | None = None
    streak_kind: str | None = None  # what the latest snapshots in a row showed
    streak: int = 0
    open_id: int | None = None  # the scene_changes row this camera has open
    open_kind: str | None = None


class SceneMonitor:
    """Watches each camera's snapshots for tamper; `observe` is called by the detect worker
    for every decoded snapshot, in the order they were taken."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cameras: dict[str, _CameraScene] = {}

    async def observe(self, camera_id: str, tensor: np.ndarray, at: datetime) -> None:
        scene = self._cameras.get(camera_id)
        if scene is None:
            scene = self._cameras[camera_id] = _CameraScene()
            await self._pool.execute(RESOLVE_LEFT_OPEN, camera_id, at,
                                     {"resolution": "hsid restarted"})
        view = thumbnail(tensor)
        if scene.reference is None:
            scene.learned.append(view)
            if len(scene.learned) >= LEARN_IMAGES:
                scene.reference = np.mean(scene.learned, axis=0)
                scene.learned.clear()
            return
        usual = measure(scene.reference, scene.reference)
        now = measure(view, scene.reference)
        kind = classify(now, usual)
        scene.streak = scene.streak + 1 if kind == scene.streak_kind else 1
        scene.streak_kind = kind
        if kind is None:
            if scene.open_id is not None and scene.streak >= CONFIRM_IMAGES:
                await self._resolve(scene, at, {"resolution": "view back to normal"})
            if scene.open_id is None:
                scene.reference += FOLLOW_RATE * (view - scene.reference)
            return
        if scene.open_id is None and scene.streak >= CONFIRM_IMAGES:
            details = {"measured": now.as_details(), "usual": usual.as_details()}
            scene.open_id = await self._pool.fetchval(
                INSERT_CHANGE, camera_id, kind, SEVERITY[kind], at, details)
            scene.open_kind = kind
            log.warning("scene_changed", camera_id=camera_id, change_type=kind,
                        severity=SEVERITY[kind], **now.as_details())
        elif kind == "movement" and scene.open_kind == "movement" and scene.streak >= ADOPT_IMAGES:
            await self._resolve(scene, at, {"resolution": "new view adopted as the reference"})
            scene.reference = view.copy()

    async def _resolve(self, scene: _CameraScene, at: datetime, details: dict) -> None:
        await self._pool.execute(RESOLVE_CHANGE, scene.open_id, at, details)
        log.info("scene_change_resolved", change_id=scene.open_id, **details)
        scene.open_id = scene.open_kind = None
        scene.streak_kind, scene.streak = None, 0


async def scene_context(pool: asyncpg.Pool, camera_id: str,
                        zone: tzinfo | None = None) -> list[str]:
    """Prompt lines for the scene changes still open on the camera (times in `zone`, the
    site's; None: the system's)."""
    return [f"Scene change on this camera since {row['detected_at'].astimezone(zone):%H:%M}: "
            f"{DESCRIPTIONS.get(row['change_type'], row['change_type'])}."
            for row in await pool.fetch(SELECT_OPEN, camera_id)]
