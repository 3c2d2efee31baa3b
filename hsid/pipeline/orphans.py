"""Orphan detections: which detections already belong to an event, and batching again the
ones that belong to none.

A stored detection reaches its event only through Redis: an open batch, then an
analysis_queue item. When Redis restarts empty, or a detect worker dies between committing
its rows and batching them, detections are stored but would never be analysed. They are
found here and handed to the batcher again. Batching a detection twice is harmless: the
analyze worker drops the detections that another event already holds (`covered_ids`, checked
again under a per-camera lock when the event is inserted), so each ends up in exactly one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime

import asyncpg
import structlog

from hsid.core.config import BatchConfig
from hsid.pipeline.batcher import Batcher, NewDetection

log = structlog.get_logger(__name__)

# An event holds detections that happened between its started_at and ended_at (the analyze
# worker sets them from its first and last detection's capture time, else detection time), so
# only events of the camera overlapping the detections' time span can hold them:
# idx_events_camera_ended keeps this to a few rows.
SELECT_OVERLAPPING_EVENTS = """
SELECT detection_ids FROM events
WHERE camera_id = $1 AND ended_at >= $2 AND started_at <= $3
  AND batch_id IS DISTINCT FROM $4
"""
SELECT_RECENT_DETECTIONS = """
SELECT id, camera_id, coalesce(captured_at, detected_at) AS happened_at, object_type,
       confidence
FROM detections WHERE detected_at >= $1 ORDER BY camera_id, happened_at, id
"""
SELECT_RECENT_EVENTS = "SELECT detection_ids FROM events WHERE ended_at >= $1"


def event_detection_ids(text: str | None) -> list[int]:
    """The ids in an events.detection_ids text (a JSON array); none when it is not one."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, int) and not isinstance(i, bool)]


async def covered_ids(conn: asyncpg.Pool | asyncpg.Connection, camera_id: str,
                      ids: Collection[int], first: datetime, last: datetime,
                      except_batch: str | None = None) -> set[int]:
    """Those of `ids` (detections of `camera_id` that happened, by capture time else
    detection time, from `first` to `last`) that an event already holds, leaving out the
    event of `except_batch`. Inside a transaction that holds the camera's event lock the
    answer stays true until the transaction ends."""
    wanted = set(ids)
    covered: set[int] = set()
    for row in await conn.fetch(SELECT_OVERLAPPING_EVENTS, camera_id, first, last,
                                except_batch):
        covered.update(wanted.intersection(event_detection_ids(row["detection_ids"])))
    return covered


async def rebatch_orphans(pool: asyncpg.Pool, batcher: Batcher, config: BatchConfig,
                          since: datetime) -> int:
    """Batch again every detection detected at or after `since` that no event holds; returns
    how many. A camera's orphans are cut into batches by capture time as the batcher cuts
    live ones (window, idle gap, size), each closed at once, so an event never spans hours
    of old detections."""
    rows = await pool.fetch(SELECT_RECENT_DETECTIONS, since)
    # A backlog's events end when it was captured, before `since` perhaps.
    oldest = min([since, *(row["happened_at"] for row in rows)])
    covered = {i for row in await pool.fetch(SELECT_RECENT_EVENTS, oldest)
               for i in event_detection_ids(row["detection_ids"])}
    orphans = [row for row in rows if row["id"] not in covered]
    for camera_id, group in itertools.groupby(orphans, key=lambda row: row["camera_id"]):
        camera_rows = list(group)
        for run in _runs(camera_rows, config):
            batch_id = await batcher.add(camera_id, [
                NewDetection(row["id"], row["object_type"] or "", row["confidence"] or 0.0)
                for row in run], fast_path=False)  # stranded, not live: no episode
            if batch_id is not None:
                await batcher.close(camera_id, batch_id, force=True)
        log.info("orphans_rebatched", camera=camera_id, count=len(camera_rows))
    return len(orphans)


def _runs(rows: Sequence[asyncpg.Record], config: BatchConfig) -> Iterator[list[asyncpg.Record]]:
    """A camera's detections (in capture order) cut where a live batch would have closed."""
    run: list[asyncpg.Record] = []
    for row in rows:
        if run and (len(run) >= config.max_detections
                    or (row["happened_at"] - run[0]["happened_at"]).total_seconds()
                    >= config.window_seconds
                    or (row["happened_at"] - run[-1]["happened_at"]).total_seconds()
                    >= config.idle_seconds):
            yield run
            run = []
        run.append(row)
    if run:
        yield run
