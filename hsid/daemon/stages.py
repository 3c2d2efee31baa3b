"""Composition: which stages each `--stages` name runs, and how each is built.

Models are loaded here, before READY=1, so that systemd only hears "ready" from a daemon
that can actually detect and analyse; a model that cannot be used on the configured
terms (require_gpu without a GPU) is a fatal start-up error, not a crash loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import tzinfo
from typing import TYPE_CHECKING, Protocol

import structlog

from hsid.core import constants
from hsid.core.context import StageContext
from hsid.core.queues import ReliableQueue
from hsid.core.runtime import Runtime

if TYPE_CHECKING:
    from hsid.pipeline.recognizer import EntityRecognizer

log = structlog.get_logger(__name__)


class Stage(Protocol):
    """A long-running part of the daemon; `run` returns once `runtime.stopping` is set."""

    async def run(self) -> None: ...


StageFactory = Callable[[], Stage]
Stages = list[tuple[str, StageFactory]]

ALL_STAGE_GROUPS = ("watch", "detect", "analyze", "api", "services")


def worker_id(stage: str) -> str:
    """Stable across restarts, so a restarted worker recovers its own in-flight items."""
    return f"{socket.gethostname()}:{stage}"


async def build_stages(runtime: Runtime) -> Stages:
    """The stages of the selected groups, their models loaded. `api` has none: the HTTP
    server is started before the stores connect, so health can say what hsid waits for."""
    builders = {"watch": _watch, "detect": _detect, "analyze": _analyze,
                "services": _services}
    stages: Stages = []
    for group in ALL_STAGE_GROUPS:
        if group in runtime.stages and group in builders:
            stages += await builders[group](runtime)
    return stages


def _queue(runtime: Runtime, name: str, stage: str) -> ReliableQueue:
    return ReliableQueue(runtime.require_redis(), name, worker_id(stage),
                         runtime.config.queues, runtime.health, keyspace=runtime.keyspace,
                         stores=runtime.stores)


async def _watch(runtime: Runtime) -> Stages:
    from hsid.pipeline.watcher import Watcher

    context = StageContext.of(runtime)
    queue = _queue(runtime, constants.DETECTION_QUEUE, "watch")
    return [("watcher", lambda: Watcher(context, queue))]


async def _detect(runtime: Runtime) -> Stages:
    from hsid.core.errors import ConfigError
    from hsid.pipeline.batcher import Batcher
    from hsid.pipeline.detect_worker import DetectWorker
    from hsid.pipeline.detector import Detector, engine_cache_root
    from hsid.pipeline.sweeper import BatchSweeper

    context = StageContext.of(runtime)
    config, redis = context.config, context.redis
    if not config.detector.model:
        raise ConfigError("detector.model is not set: point it at an RT-DETRv2 ONNX file "
                          "(see `hsid models list`), or leave `detect` out of --stages")
    detector = Detector(config.detector, engine_cache_root(config.paths.state_dir))
    started = time.perf_counter()
    await asyncio.to_thread(detector.load)
    await asyncio.to_thread(detector.warm_up)  # TensorRT builds its engine now, not mid-stream
    log.info("detector_ready", seconds=round(time.perf_counter() - started, 2),
             provider=detector.provider, batch=detector.max_batch)
    runtime.detector = detector
    runtime.health.info["detector"] = {"provider": detector.provider,
                                       "model": config.detector.model,
                                       "interface": detector.interface}
    batcher = Batcher(config.batch, redis, runtime.keyspace,  # the fast path's back-pressure
                      queue=_queue(runtime, constants.ANALYSIS_QUEUE, "batcher"))
    queue = _queue(runtime, constants.DETECTION_QUEUE, "detect")
    entities = await _entity_recognizer(runtime)
    return [
        ("detector", lambda: DetectWorker(context, queue, detector, batcher,
                                          entities=entities)),
        ("batch_sweeper", lambda: BatchSweeper(context, batcher)),
    ]


async def _entity_recognizer(runtime: Runtime) -> EntityRecognizer | None:
    """The detect stage's entity recognition, or None when `entities.model` is empty or its
    model can't be used: entities are best effort, so that is an error line and health
    says why, not a daemon that won't start."""
    from hsid.core.errors import ConfigError
    from hsid.pipeline.recognizer import EntityRecognizer, load_embedders

    config = runtime.config
    if not config.entities.model:
        runtime.health.info["entities"] = {"enabled": False, "reason": "entities.model is empty"}
        return None
    try:
        embedders = await asyncio.to_thread(load_embedders, config.entities,
                                            config.detector.threads)
    except ConfigError as err:
        log.error("entities_unavailable", error=str(err))
        runtime.health.info["entities"] = {"enabled": False, "reason": str(err)}
        return None
    runtime.health.info["entities"] = {
        "enabled": True,
        "models": {name: e.model for name, e in embedders.items()},
        "provider": embedders["person"].provider,
    }
    return EntityRecognizer(config.entities, runtime.require_pool(), embedders)


async def _analyze(runtime: Runtime) -> Stages:
    from hsid.analysis.llm import RiskScorer
    from hsid.analysis.prompts import seed_default_prompt
    from hsid.pipeline.analyze_worker import AnalyzeWorker
    from hsid.pipeline.schedule import FairQueue

    context = StageContext.of(runtime)
    config, redis = context.config, context.redis
    if config.entities.model and runtime.health.info.get("entities", {}).get("enabled") is False:
        # This process's recognition could not start: no entity will come to wait for.
        config = config.with_overrides({"entities": {"wait_seconds": 0}})
        context = context.with_config(config)
    await seed_default_prompt(context.pool)
    scorer = RiskScorer(config.analyzer)
    await scorer.load()
    runtime.health.info["analyzer"] = {
        "model": config.analyzer.model or None,
        "mode": "llm" if scorer.unavailable_reason is None else "rules",
        "reason": scorer.unavailable_reason,
    }
    queue = FairQueue(redis, constants.ANALYSIS_QUEUE, worker_id("analyze"), config.queues,
                      runtime.health, keyspace=runtime.keyspace, stores=runtime.stores,
                      max_consecutive=config.analyzer.max_consecutive)
    return [("analyzer", lambda: AnalyzeWorker(context, queue, scorer))]


async def _services(runtime: Runtime) -> Stages:
    from hsid.analysis.baselines import BaselineService
    from hsid.core.config import site_zone
    from hsid.upkeep.cleanup import CleanupService
    from hsid.upkeep.gpu import GpuMonitor
    from hsid.upkeep.status import StatusPublisher

    context = StageContext.of(runtime)
    zone = site_zone(context.config.site)

    def inference_fps() -> float | None:
        return runtime.detector.inference_fps if runtime.detector is not None else None

    stages: Stages = [
        ("gpu_monitor", lambda: GpuMonitor(context, inference_fps)),
        ("status_publisher", lambda: StatusPublisher(runtime)),
        ("cleanup", lambda: CleanupService(context, zone=zone)),
        *_notifications(context, zone),
    ]
    if context.config.baselines.enabled:
        stages.append(("baselines", lambda: BaselineService(context, zone=zone)))
    return stages


def _notifications(context: StageContext, zone: tzinfo) -> Stages:
    """The alert notifier and, with [mqtt] url set, Home Assistant's publisher; they share
    the pictures (Evidence) and one MQTT connection when the alerts go to that broker."""
    from hsid.alerts.channels import AlertChannels
    from hsid.alerts.delivery import AlertDelivery
    from hsid.core.config import alert_settings
    from hsid.homeassistant.link import MqttLink
    from hsid.homeassistant.publisher import HomeAssistantPublisher
    from hsid.imaging.evidence import Evidence

    config = context.config
    alerts = alert_settings(config)
    evidence = Evidence(context.pool, config.paths, config.detector.max_pixels)
    link = MqttLink(config.mqtt) if config.mqtt.url else None

    def channels() -> AlertChannels:
        return AlertChannels(alerts, evidence=evidence, public_url=config.api.public_url,
                             zone=zone, link=link)

    stages: Stages = [("notifier", lambda: AlertDelivery(context, channels=channels))]
    if link is not None:
        stages.append(("homeassistant", lambda: HomeAssistantPublisher(
            context, link=link, evidence=evidence)))
    return stages
