"""Analyze worker: analysis_queue -> risk assessment (LLM or rules) -> events row and its
alert (one transaction) -> publish.

A batch id yields one event (a unique index on events.batch_id), so a job processed twice
stores nothing new. A detection belongs to one event only: those of a batch that another
event already holds (batched again after a crash or a Redis restart, see orphans.py) are
dropped before the assessment, and checked again under a per-camera lock when the event is
inserted, so two analyzers never both take one. The assessment of a batch is kept across
retries of its database write, so a flaky database never costs a second LLM generation.
A batch that was being analysed when the daemon died POISON_CRASH_COUNT times is scored by
the rules: the LLM is the likeliest cause, and a third death would only repeat it.

The batch's people and vehicles are looked up as entities (entities/context.py):
the prompt and the rule scorer hear how often each was seen today and whether the
household trusts it, and alert rules may pass over an event of trusted entities only.

Episodes (batcher.py): an item may carry `episode_id` and `fast_path`. The fast-path item
of an episode has the episode id as its batch id, so a follow-up batch quotes that event
(its time and summary) in the prompt, and the alerts of one episode share their dedup: a
rule alerts once per episode unless a follow-up's risk level is higher (alerts/rules.py).
Each camera has an LLM budget (`analyzer.max_per_camera_hour`, counted in Redis per clock
hour): beyond it batches are scored by the rules, and fast-path snapshots still get the LLM.

Time is when the snapshots were taken (`captured_at`, else `detected_at` for rows stored
before capture times), in the site's zone: the event's started_at and ended_at, night and
day, the prompt's local time, alert schedules and the baselines quoted all use it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from hsid.alerts.rules import DetectionFacts, EventFacts, raise_alert
from hsid.analysis.assessment import BatchContext, DetectionContext, RiskAssessment
from hsid.analysis.baselines import baseline_context
from hsid.analysis.fallback import fallback_assessment
from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import active_settings
from hsid.cameras.tamper import scene_context
from hsid.cameras.zones import enabled_zones, zones_of_box
from hsid.core import constants, metrics
from hsid.core.config import Config, site_zone
from hsid.core.context import StageContext
from hsid.core.errors import PermanentError, TransientError
from hsid.core.messages import AlertData, AlertMessage, AnalysisItem, EventData, EventMessage
from hsid.core.queues import Job, ReliableQueue, consume
from hsid.entities.context import EntityFacts, entity_facts
from hsid.pipeline.batcher import is_fast_path
from hsid.pipeline.image_format import image_header
from hsid.pipeline.orphans import covered_ids

log = structlog.get_logger(__name__)

# Enough of a file to hold a JPEG's or PNG's dimensions header.
HEADER_BYTES = 64 * 1024
# The rules' reason for a batch that kept killing the daemon (POISON_CRASH_COUNT deaths).
POISON_REASON = "the LLM analysis crashed the daemon twice on this batch"
BUDGET_REASON = "the camera's LLM budget of {budget} analyses an hour was reached"

SELECT_EVENT_ID = "SELECT id FROM events WHERE batch_id = $1"
# Held while an event of the camera is checked and inserted: two analyzers take turns, so
# "no other event holds these detections" stays true until the insert commits.
LOCK_CAMERA_EVENTS = "SELECT pg_advisory_xact_lock(hashtext('hsid.events'), hashtext($1))"
SELECT_DETECTIONS = """
SELECT id, file_path, coalesce(captured_at, detected_at) AS happened_at, object_type,
       confidence, bbox_x, bbox_y, bbox_width, bbox_height
FROM detections WHERE id = any($1::int[]) AND camera_id = $2 ORDER BY happened_at, id
"""
SELECT_CAMERA_NAME = "SELECT name FROM cameras WHERE id = $1"
SELECT_EPISODE_START = """
SELECT started_at, risk_level, summary FROM events WHERE batch_id = $1 AND camera_id = $2
"""
INSERT_EVENT = """
INSERT INTO events (batch_id, camera_id, started_at, ended_at, risk_score, risk_level,
                    summary, reasoning, detection_ids, is_fast_path)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (batch_id) DO NOTHING
RETURNING id
"""


def image_size(path: str, fallback: tuple[int, int]) -> tuple[int, int]:
    """Blocking: the image's (width, height) from its header; `fallback` if it is unreadable."""
    try:
        with open(path, "rb") as file:
            _, width, height = image_header(file.read(HEADER_BYTES))
    except (OSError, PermanentError):
        return fallback
    return width, height


def upload_age_seconds(path: str) -> float | None:
    """Blocking: seconds since the upload finished (the file's mtime), None if it is gone."""
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return None


def happened_at(row: asyncpg.Record) -> datetime:
    """When a detection row's snapshot was taken: SELECT_DETECTIONS's happened_at, else (a
    plain detections row) its capture time, else its detection time."""
    return row.get("happened_at") or row.get("captured_at") or row["detected_at"]


async def batch_context(pool: asyncpg.Pool, config: Config, camera_id: str,
                        rows: list[asyncpg.Record]) -> BatchContext:
    """What the analyzer and the alert rules know of a batch: camera, time, each detection
    with its position and zones, and how usual such activity is."""
    name = await pool.fetchval(SELECT_CAMERA_NAME, camera_id) or camera_id
    zones = await enabled_zones(pool, camera_id)
    entities = await _entities(pool, config, rows)
    detections = []
    for row in rows:
        box = (row["bbox_x"] or 0, row["bbox_y"] or 0, row["bbox_width"] or 0,
               row["bbox_height"] or 0)
        width, height = await asyncio.to_thread(
            image_size, row["file_path"], (box[0] + box[2], box[1] + box[3]))
        inside = zones_of_box(zones, box, width, height)
        entity = entities.of(row["id"])
        detections.append(DetectionContext(
            object_type=row["object_type"] or "object", confidence=row["confidence"] or 0.0,
            bbox=(box[0], box[1], box[0] + box[2], box[1] + box[3]),
            image_width=width, image_height=height,
            zones=[zone.name for zone in inside],
            zone_ids=tuple(str(zone.id) for zone in inside),
            entity_id=entity.entity_id if entity else None,
            trust_status=entity.trust_status if entity else None))
    local_time = happened_at(rows[0]).astimezone(site_zone(config.site))
    extra = await _enrichment(pool, config, camera_id, rows) + entities.lines
    return BatchContext(camera_name=name, local_time=local_time, detections=detections,
                        extra_context=extra, entities=entities.entities)


async def _entities(pool: asyncpg.Pool, config: Config,
                    rows: list[asyncpg.Record]) -> EntityFacts:
    """The batch's known people and vehicles; best-effort: without them the analysis goes
    on (and no alert is skipped for trust it could not read)."""
    try:
        return await entity_facts(pool, config.entities, [row["id"] for row in rows],
                                  happened_at(rows[-1]), site_zone(config.site))
    except asyncpg.PostgresError as err:
        log.warning("entities_unavailable", error=str(err))
        return EntityFacts()


async def _enrichment(pool: asyncpg.Pool, config: Config, camera_id: str,
                      rows: list[asyncpg.Record]) -> list[str]:
    """How usual this is and whether the view was tampered with, for the prompt;
    best-effort: without it the analysis goes on."""
    lines: list[str] = []
    zone = site_zone(config.site)
    try:
        if config.scene.enabled:
            lines += await scene_context(pool, camera_id, zone)
        if config.baselines.enabled:
            lines += await baseline_context(
                pool, config.baselines, camera_id, happened_at(rows[-1]),
                [row["object_type"] for row in rows if row["object_type"]], zone)
    except asyncpg.PostgresError as err:
        log.warning("context_unavailable", error=str(err))
    return lines


class AnalyzeWorker:
    """Stage: consumes analysis_queue until `stopping` is set."""

    def __init__(self, context: StageContext, queue: ReliableQueue, scorer: RiskScorer) -> None:
        """`queue`: the analysis_queue (a FairQueue in the daemon)."""
        self._config = context.config
        self._events_channel = context.keyspace.channel(constants.SECURITY_EVENTS_CHANNEL)
        self._pool = context.pool
        self._redis = context.redis
        self._queue = queue
        self._scorer = scorer
        self._stopping = context.stopping
        self._keyspace = context.keyspace
        # batch id -> (the detection ids assessed, their assessment), kept across retries
        self._assessed: dict[str, tuple[tuple[int, ...], RiskAssessment]] = {}

    async def run(self) -> None:
        await consume(self._queue, self._handle, self._config.queues, self._stopping)

    async def _handle(self, job: Job) -> None:
        item = job.item  # decoded and checked by the queue (messages.AnalysisItem)
        if not isinstance(item, AnalysisItem):
            raise PermanentError(f"not an analysis item: {type(item).__name__}")
        batch_id, camera_id, ids = item.batch_id, item.camera_id, item.detection_ids
        # fast is None for an item from before episodes, which says neither
        episode_id, fast = item.episode_id, item.fast_path
        with structlog.contextvars.bound_contextvars(camera_id=camera_id, batch_id=batch_id):
            try:
                if await self._pool.fetchval(SELECT_EVENT_ID, batch_id) is not None:
                    log.info("event_already_stored")
                    return
                rows = await self._pool.fetch(SELECT_DETECTIONS, ids, camera_id)
                if not rows:
                    raise PermanentError(f"none of detections {ids} exist any more")
                rows = await _uncovered(self._pool, batch_id, camera_id, rows)
                while rows:
                    context = await batch_context(self._pool, self._config, camera_id, rows)
                    if episode_id is not None and episode_id != batch_id:
                        context.extra_context[:0] = await self._episode_story(
                            episode_id, camera_id)
                    if fast is None:  # an item queued before episodes: one detection alone
                        fast = len(rows) == 1 and is_fast_path(
                            self._config.batch, rows[0]["object_type"] or "",
                            rows[0]["confidence"] or 0.0)
                    assessment = await self._assessment(batch_id, camera_id, rows, context,
                                                        job.crash_count, fast)
                    taken = await self._store(batch_id, camera_id, rows, context, assessment,
                                              fast=fast, episode_id=episode_id)
                    if not taken:
                        break
                    # Another analyzer's event took some meanwhile: assess what is left.
                    rows = [row for row in rows if row["id"] not in taken]
                if not rows:
                    log.info("batch_already_covered", detection_ids=ids)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                raise TransientError(f"database: {err}") from err
            self._assessed.pop(batch_id, None)

    async def _assessment(self, batch_id: str, camera_id: str, rows: list[asyncpg.Record],
                          context: BatchContext, crash_count: int,
                          fast: bool) -> RiskAssessment:
        """The assessment of these rows, reused when a retry brings the same ones."""
        ids = tuple(row["id"] for row in rows)
        kept = self._assessed.get(batch_id)
        if kept is not None and kept[0] == ids:
            return kept[1]
        assessment = await self._assess(camera_id, context, crash_count, fast)
        self._assessed[batch_id] = (ids, assessment)
        return assessment

    async def _assess(self, camera_id: str, context: BatchContext, crash_count: int,
                      fast: bool) -> RiskAssessment:
        if crash_count >= constants.POISON_CRASH_COUNT:
            log.warning("analysis_poison_fallback", crash_count=crash_count)
            metrics.LLM_FALLBACKS.labels("crashed_daemon").inc()
            metrics.ANALYSES.labels("rules-fallback").inc()
            return fallback_assessment(context, POISON_REASON, self._config.analyzer)
        if not await self._within_budget(camera_id, fast):
            budget = self._config.analyzer.max_per_camera_hour
            log.info("analysis_over_budget", budget=budget)
            metrics.ANALYSES.labels("rules-budget").inc()
            return fallback_assessment(context, BUDGET_REASON.format(budget=budget),
                                       self._config.analyzer)
        started = time.perf_counter()
        assessment = await self._scorer.assess(context, await active_settings(self._pool))
        metrics.STAGE_LATENCY.labels("llm").observe(time.perf_counter() - started)
        if not assessment.used_llm:
            metrics.LLM_FALLBACKS.labels(_reason_label(assessment.fallback_reason)).inc()
        metrics.ANALYSES.labels("llm" if assessment.used_llm else "rules-fallback").inc()
        return assessment

    async def _within_budget(self, camera_id: str, fast: bool) -> bool:
        """Count one LLM analysis against the camera's hour; False when a batch would go
        past `analyzer.max_per_camera_hour` (0: no budget). A fast path is counted but
        always allowed: it is the one analysis per episode that must be quick and good."""
        budget = self._config.analyzer.max_per_camera_hour
        if budget == 0 or self._scorer.unavailable_reason is not None:
            return True  # no budget, or no LLM to spare: the rules say why themselves
        key = self._keyspace.llm_budget(camera_id, int(time.time() // 3600))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, constants.LLM_BUDGET_TTL_SECONDS)
            used, _ = await pipe.execute()
        return fast or int(used) <= budget

    async def _episode_story(self, episode_id: str, camera_id: str) -> list[str]:
        """A follow-up's prompt line about how its episode began (the fast-path event)."""
        row = await self._pool.fetchrow(SELECT_EPISODE_START, episode_id, camera_id)
        if row is None:
            return []
        began = row["started_at"].astimezone(site_zone(self._config.site))
        return [f"This continues an episode that began at {began:%H:%M:%S} on this camera, "
                f"then assessed {row['risk_level']}: {row['summary']}"]

    async def _store(self, batch_id: str, camera_id: str, rows: list[asyncpg.Record],
                     context: BatchContext, assessment: RiskAssessment, *, fast: bool,
                     episode_id: str | None) -> set[int]:
        """Insert the event and its alert, then publish them. Returns the detections that,
        checked under the camera's lock, another event holds by now (nothing is stored
        then); an empty set once the event is stored, or was already."""
        started_at, ended_at = rows[0]["happened_at"], rows[-1]["happened_at"]
        alert = None
        with metrics.STAGE_LATENCY.labels("database").time():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_CAMERA_EVENTS, camera_id)
                taken = await covered_ids(conn, camera_id, [row["id"] for row in rows],
                                          started_at, ended_at, except_batch=batch_id)
                if taken:
                    log.info("detections_taken_meanwhile", detection_ids=sorted(taken))
                    return taken
                event_id = await conn.fetchval(
                    INSERT_EVENT, batch_id, camera_id, started_at, ended_at,
                    assessment.risk_score, assessment.risk_level, assessment.summary,
                    assessment.reasoning, json.dumps([row["id"] for row in rows]), fast)
                if event_id is not None:
                    alert = await self._raise_alert(conn, EventFacts(
                        event_id=event_id, camera_id=camera_id, camera_name=context.camera_name,
                        risk_score=assessment.risk_score, risk_level=assessment.risk_level,
                        summary=assessment.summary, started_at=started_at,
                        detections=[DetectionFacts(d.object_type, d.confidence,
                                                   frozenset(d.zone_ids), tuple(d.zones),
                                                   d.trust_status)
                                    for d in context.detections],
                        episode_id=episode_id))
        if event_id is None:
            log.info("event_already_stored")
            return set()
        metrics.EVENTS.labels(assessment.risk_level).inc()
        if (age := await asyncio.to_thread(upload_age_seconds, rows[0]["file_path"])) is not None:
            metrics.STAGE_LATENCY.labels("upload_to_event").observe(age)
        log.info("event_created", event_id=event_id, risk_score=assessment.risk_score,
                 risk_level=assessment.risk_level, fast_path=fast, llm=assessment.used_llm)
        await self._publish(event_id, batch_id, camera_id, started_at, assessment)
        if alert is not None:  # after the event, so clients know the event it refers to
            message = AlertMessage(data=AlertData.model_validate(alert))
            await self._redis.publish(self._events_channel, message.encode())
        return set()

    async def _raise_alert(self, conn: asyncpg.Connection,
                           event: EventFacts) -> dict[str, Any] | None:
        """Alert rules, in a savepoint of the event's transaction: whatever goes wrong with
        them is logged and rolled back alone, and the event is stored all the same."""
        try:
            async with conn.transaction():
                return await raise_alert(conn, event, self._config.alerts,
                                         zone=site_zone(self._config.site))
        except (OSError, asyncpg.InterfaceError):
            raise  # the connection is gone: the event can't commit either, retry the job
        except Exception:
            log.exception("alert_rules_failed", event_id=event.event_id)
            return None

    async def _publish(self, event_id: int, batch_id: str, camera_id: str,
                       started_at: datetime, assessment: RiskAssessment) -> None:
        message = EventMessage(data=EventData(
            id=event_id, event_id=event_id, batch_id=batch_id, camera_id=camera_id,
            risk_score=assessment.risk_score, risk_level=assessment.risk_level,
            summary=assessment.summary, started_at=started_at))
        await self._redis.publish(self._events_channel, message.encode())


async def _uncovered(pool: asyncpg.Pool, batch_id: str, camera_id: str,
                     rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """`rows` (in time order) less the detections another event already holds."""
    covered = await covered_ids(pool, camera_id, [row["id"] for row in rows],
                                rows[0]["happened_at"], rows[-1]["happened_at"],
                                except_batch=batch_id)
    if covered:
        log.info("detections_already_covered", detection_ids=sorted(covered))
    return [row for row in rows if row["id"] not in covered]


def _reason_label(reason: str | None) -> str:
    """A low-cardinality metric label for why the rules were used."""
    text = (reason or "").lower()
    for label in ("fact guard", "deadline", "no analyzer model", "failed", "not loaded"):
        if label in text:
            return label.replace(" ", "_")
    return "unavailable"

