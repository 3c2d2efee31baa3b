"""Entity recognition in the detect worker: crops of stored detections -> embeddings -> entities.

Runs after an image's detections are committed, announced and batched (detect_worker.py),
for the person and vehicle detections of every image of an inference batch at once: the
crops (the box plus EMBED_MARGIN) are cut and embedded in one worker thread, one model
call per embedder, and matched by entities/matcher.EntityMatcher. Best effort: whatever
fails is logged (`entities_failed`) and costs only the entities; detections and events
never wait for it, and the analyzer waits at most `entities.wait_seconds` for its result.
It runs after the queue items are acknowledged, so detections of a daemon that dies in
between stay without an entity (a retried job finds them stored and recognises nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np
import structlog

from hsid.core import metrics
from hsid.core.config import EntitiesConfig
from hsid.core.errors import STORE_ERRORS, TransientError
from hsid.entities.embedder import Embedder, dominant_colours
from hsid.entities.matcher import ENTITY_CLASSES, ENTITY_TYPE_OF, EntityMatcher, Sighting
from hsid.pipeline.detector import DecodedImage, ObjectDetection
from hsid.pipeline.thumbnails import crop

log = structlog.get_logger(__name__)

# Of the box's width and height, on each side: a little context for the crop, less than a
# thumbnail's, as re-identification models are trained on tight boxes.
EMBED_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored detection to recognise, with the decoded image it was found in."""

    detection_id: int
    camera_id: str
    seen_at: datetime  # capture time, else detection time
    found: ObjectDetection
    image: DecodedImage
    snapshot: str  # the image's sha256 (or path): two of one image are never one entity


def embedder_for(config: EntitiesConfig, entity_type: str) -> str:
    """Which configured model embeds an entity type: "person" or "vehicle"."""
    return "vehicle" if entity_type == "vehicle" and config.vehicle_model else "person"


def load_embedders(config: EntitiesConfig, threads: int = 0) -> dict[str, Embedder]:
    """The configured embedders, loaded (blocking): "person" for `model` (it embeds
    vehicles too unless `vehicle_model` is set), "vehicle" for `vehicle_model`. Raises
    ConfigError when a file is missing or not an image embedder."""
    embedders = {"person": Embedder(config.model, config.mean, config.std, threads)}
    if config.vehicle_model:
        embedders["vehicle"] = Embedder(config.vehicle_model, config.vehicle_mean,
                                        config.vehicle_std, threads)
    for embedder in embedders.values():
        embedder.load()
    return embedders


class EntityRecognizer:
    """The detect worker's recognition step; `recognise` never raises but on cancellation."""

    def __init__(self, config: EntitiesConfig, pool: asyncpg.Pool,
                 embedders: dict[str, Embedder], matcher: EntityMatcher | None = None) -> None:
        self._config = config
        self._pool = pool
        self._embedders = embedders
        self._matcher = matcher or EntityMatcher(config)

    async def recognise(self, candidates: Sequence[Candidate]) -> int:
        """Embed and match the person and vehicle candidates; returns how many were
        recognised (0 when it failed, which is logged)."""
        wanted = [c for c in candidates if c.found.object_type in ENTITY_CLASSES]
        if not wanted:
            return 0
        try:
            sightings = await asyncio.to_thread(self._sightings, wanted)
            return len(await self._matcher.record(self._pool, sightings))
        except (TransientError, *STORE_ERRORS) as err:
            log.warning("entities_failed", detections=len(wanted),
                        error=str(err) or type(err).__name__)
        except Exception:  # a model or a bug must never cost the pipeline more than this
            log.exception("entities_failed", detections=len(wanted))
        return 0

    def _sightings(self, candidates: list[Candidate]) -> list[Sighting]:
        """Blocking: crop, describe and embed, each embedder's crops in one call."""
        crops = [np.ascontiguousarray(crop(c.image, c.found, EMBED_MARGIN)) for c in candidates]
        vectors: list[np.ndarray | None] = [None] * len(candidates)
        for name, embedder in self._embedders.items():
            mine = [i for i, c in enumerate(candidates)
                    if embedder_for(self._config, ENTITY_TYPE_OF[c.found.object_type]) == name]
            if not mine:
                continue
            started = time.perf_counter()
            embedded = embedder.embed([crops[i] for i in mine])
            per_crop = (time.perf_counter() - started) / len(mine)
            for i, vector in zip(mine, embedded, strict=True):
                vectors[i] = vector
                metrics.STAGE_LATENCY.labels("embedding").observe(per_crop)
        # Colours of the box itself: the margin is background, not what the entity wears.
        return [Sighting(c.detection_id, c.camera_id, c.found.object_type, c.seen_at, vector,
                         dominant_colours(crop(c.image, c.found, 0.0)), c.snapshot)
                for c, vector in zip(candidates, vectors, strict=True) if vector is not None]

