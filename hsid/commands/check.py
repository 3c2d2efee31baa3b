"""`hsid check`: verifies everything the daemon needs, one line per check, with a fix for each."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import asyncpg

from hsid.core.broker import connect_redis
from hsid.core.config import Config
from hsid.core.db import create_pool
from hsid.core.errors import HsidError
from hsid.embedded import store_modes


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


Check = Callable[[Config], Awaitable[CheckResult]]


def _embedded_check(store: str, mode: str) -> CheckResult:
    """No URL configured: say which embedded server will run, or why none can."""
    if mode.startswith("unavailable:"):
        return CheckResult(store, False, mode, "install the server (see the message) or "
                           f"configure {store}.url")
    return CheckResult(store, True, f"no URL configured: {mode}")


async def check_database(config: Config) -> CheckResult:
    if not config.database.url:
        return _embedded_check("database", store_modes(config)["database"])
    try:
        pool = await create_pool(config.database)
    except HsidError as err:
        return CheckResult("database", False, str(err),
                           "start PostgreSQL or correct database.url / DATABASE_URL")
    try:
        version = await pool.fetchval("SHOW server_version")
    finally:
        await pool.close()
    return CheckResult("database", True, f"PostgreSQL {version} reachable")


async def check_redis(config: Config) -> CheckResult:
    if not config.redis.url:
        return _embedded_check("redis", store_modes(config)["redis"])
    try:
        client = await connect_redis(config.redis)
    except HsidError as err:
        return CheckResult("redis", False, str(err), "start Redis or correct redis.url / REDIS_URL")
    try:
        version = (await client.info("server")).get("redis_version", "?")
    finally:
        await client.aclose()
    return CheckResult("redis", True, f"Redis {version} reachable")


async def check_camera_root(config: Config) -> CheckResult:
    root = config.paths.camera_root
    if not root.is_dir():
        return CheckResult("camera_root", False, f"{root} is not a directory",
                           f"create it (mkdir -p {root}) or set paths.camera_root")
    if not os.access(root, os.R_OK | os.X_OK):
        return CheckResult("camera_root", False, f"{root} is not readable",
                           "give the hsid user read access to the camera folders")
    cameras = sum(1 for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    return CheckResult("camera_root", True, f"{root} readable, {cameras} camera folder(s)")


async def check_watch(config: Config) -> CheckResult:
    """How the watcher will follow the camera root: inotify, or polling and why."""
    from hsid.cameras.filesystems import watch_mode

    mode = watch_mode(config.paths.camera_root, config.watcher.polling)
    if mode.polling:
        every = config.watcher.poll_interval_seconds
        return CheckResult("watch", True, f"polling every {every:g} s: {mode.reason}")
    return CheckResult("watch", True, f"inotify: {mode.reason} (watcher.polling = "
                       f"{str(config.watcher.polling).lower()})")


async def check_site_time(config: Config) -> CheckResult:
    """The time zone hsid reasons in (night and day, schedules, baselines, cleanup) and
    the local time there now, so a wrong zone shows at a glance."""
    from hsid.core.config import site_zone, zone_name

    zone = site_zone(config.site)
    where = ("site.timezone" if config.site.timezone
             else "the system's; set site.timezone to the house's if it differs")
    now = datetime.now(zone)
    return CheckResult("time", True, f"zone {zone_name(zone)} ({where}), local time now "
                       f"{now:%a %Y-%m-%d %H:%M} (UTC{now:%z})")


async def check_state_dir(config: Config) -> CheckResult:
    state = config.paths.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state):
            pass
    except OSError as err:
        return CheckResult("state_dir", False, f"{state} is not writable: {err}",
                           "create it and give the hsid user write access, or set paths.state_dir")
    return CheckResult("state_dir", True, f"{state} writable")


async def check_models(config: Config) -> CheckResult:
    detector, analyzer = config.detector.model, config.analyzer.model
    problems = []
    if not detector:
        problems.append("detector.model is not set")
    elif not Path(detector).is_file():
        problems.append(f"detector.model {detector} does not exist")
    if analyzer and not Path(analyzer).is_file():
        problems.append(f"analyzer.model {analyzer} does not exist")
    for key in ("model", "vehicle_model"):
        embedder = getattr(config.entities, key)
        if embedder and not Path(embedder).is_file():
            problems.append(f"entities.{key} {embedder} does not exist")
    if problems:
        return CheckResult("models", False, "; ".join(problems),
                           "run `hsid models fetch` and point the config keys at the files")
    llm = analyzer or "none (rule-based risk scoring)"
    entities = config.entities.model or "none (entities off)"
    return CheckResult("models", True, f"detector {detector}, analyzer {llm}, "
                                       f"entities {entities}")


async def check_providers(config: Config) -> CheckResult:
    """Which execution provider the detector will use, and why that one."""
    import onnxruntime

    from hsid.core.nvml import gpu_names
    from hsid.pipeline import detector

    installed = onnxruntime.get_available_providers()
    usable, reason = detector.usable_providers(installed, gpu_names(),
                                               detector.tensorrt_loadable())
    provider = usable[0]
    if config.detector.require_gpu and provider == detector.CPU_PROVIDER:
        return CheckResult("onnxruntime", False, f"{provider}: {reason} (installed: "
                           f"{', '.join(installed)})",
                           "install the NVIDIA driver, CUDA and cuDNN for onnxruntime-gpu, "
                           "or set detector.require_gpu = false")
    if provider == detector.TENSORRT_PROVIDER:
        reason += ", " + _engine_cache(config)
    return CheckResult("onnxruntime", True, f"{provider}: {reason}")


def _engine_cache(config: Config) -> str:
    """Where the TensorRT engine is kept, and whether it is built yet."""
    from hsid.pipeline import detector

    root = detector.engine_cache_root(config.paths.state_dir)
    model = Path(config.detector.model)
    if not model.is_file():
        return f"engine cached in {root}"
    folder = detector.engine_dir(root, model, config.detector.batch_size)
    built = folder.is_dir() and any(folder.glob("*.engine"))
    state = "built" if built else "built at start-up, before READY (may take minutes)"
    return f"engine cached in {folder} ({state})"


async def check_llm(config: Config) -> CheckResult:
    """Whether llama.cpp can put the analyzer on the GPU, and how many layers go there."""
    from hsid.analysis import llm
    from hsid.core.nvml import gpu_names

    gpu = llm.gpu_offload_supported()
    model = Path(config.analyzer.model) if config.analyzer.model else None
    layers = None
    if gpu and model is not None and model.is_file():
        layers = llm.block_count(llm.gguf_metadata(model))
    return CheckResult("llm", True, llm.describe_offload(config.analyzer, gpu,
                                                         bool(gpu_names()), layers))


async def check_gpu(config: Config) -> CheckResult:
    from hsid.core.nvml import gpu_names

    names = gpu_names()
    if names:
        return CheckResult("gpu", True, f"visible: {', '.join(names)}")
    if config.detector.require_gpu:
        return CheckResult("gpu", False, "no NVIDIA GPU visible",
                           "install the NVIDIA driver, or set detector.require_gpu = false")
    return CheckResult("gpu", True, "no NVIDIA GPU visible: detection and the LLM run on the CPU")


SELECT_RULE_CHANNELS = "SELECT name, channels FROM alert_rules WHERE enabled ORDER BY name"


async def check_alerts(config: Config) -> CheckResult:
    """Every channel an alert could be sent to is configured: the defaults, and (with a
    reachable database that has the schema) those of the enabled rules."""
    from hsid.alerts.channels import configured_channels
    from hsid.core.config import alert_settings

    ready = configured_channels(alert_settings(config))  # mqtt: [mqtt] url serves too
    wanted = {f"alerts.default_channels ({channel})": channel
              for channel in config.alerts.default_channels}
    rules = await _enabled_rule_channels(config)
    for name, channels in rules or ():
        wanted |= {f"rule {name!r} ({channel})": channel
                   for channel in channels or config.alerts.default_channels}
    if missing := [where for where, channel in wanted.items() if channel not in ready]:
        return CheckResult("alerts", False, "no URL set for " + ", ".join(missing),
                           "set alerts.webhook_url / alerts.mqtt_url / alerts.apprise_urls, or "
                           "change the channels; "
                           "then `hsid alerts test`")
    checked = "no rules checked" if rules is None else f"{len(rules)} enabled rule(s)"
    return CheckResult("alerts", True, f"channels ready: {', '.join(ready)}; {checked}")


async def _enabled_rule_channels(config: Config) -> list[tuple[str, list[str] | None]] | None:
    """(name, channels) of each enabled rule; None without a database to ask."""
    if not config.database.url:
        return None  # embedded: not running while hsid is not
    try:
        pool = await create_pool(config.database)
    except HsidError:
        return None  # check_database says so
    try:
        return [(r["name"], r["channels"]) for r in await pool.fetch(SELECT_RULE_CHANNELS)]
    except asyncpg.UndefinedTableError:
        return []  # no schema yet: no rules
    finally:
        await pool.close()


CHECKS: tuple[Check, ...] = (
    check_database, check_redis, check_camera_root, check_watch, check_site_time,
    check_state_dir, check_models, check_providers, check_gpu, check_llm, check_alerts,
)


async def run_checks(config: Config, out: TextIO) -> int:
    """Print one line per check (config was already validated to get here); 0 if all pass."""
    out.write("OK   config: valid\n")
    failed = 0
    for check in CHECKS:
        result = await check(config)
        out.write(f"{'OK  ' if result.ok else 'FAIL'} {result.name}: {result.detail}\n")
        if not result.ok:
            failed += 1
            out.write(f"     fix: {result.fix}\n")
    out.flush()
    return 1 if failed else 0
