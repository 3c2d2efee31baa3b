"""Configuration: config.toml plus environment overrides, validated once into frozen sections.

Precedence, lowest first: built-in defaults, the TOML file, the reference's plain
environment names (DATABASE_URL, REDIS_URL, ...) and watchfiles' WATCHFILES_FORCE_POLLING,
then `HSID_<SECTION>__<KEY>`.
Every error names the key and the value, so start-up stops with one clear line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hsid.core.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/hsid/config.toml")
ENV_PREFIX = "HSID_"

# The reference's environment names, kept so existing deployments' settings still apply.
REFERENCE_ENV_NAMES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("redis", "url"),
    "RETENTION_DAYS": ("retention", "days"),
    "LOG_RETENTION_DAYS": ("retention", "log_days"),
    "DEDUPE_TTL_SECONDS": ("dedupe", "ttl_seconds"),
    "API_KEY_ENABLED": ("api", "api_key_enabled"),
    "API_KEYS": ("api", "api_keys"),
}

COCO_DEFAULT_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "bus", "truck", "bird", "cat", "dog",
)

LOG_LEVEL_PATTERN = r"(?i)debug|info|warning|error|critical"

# Names uploads use while in progress (watcher.temp_patterns; globs, case-insensitive):
# - leading dot: ProFTPD's HiddenStores (`.in.snap.jpg.`), Pure-FTPd (`.pureftpd-upload.*`),
#   rsync (`.snap.jpg.XXXXXX`);
# - `.part`, `.filepart` (WinSCP), `.tmp`: client and server partial-upload suffixes, `.tmp`
#   also the `snap.jpg.tmp` style of camera firmwares that rename when done;
# - `*_tmp.*`: the "FTP rename" option of Edimax/Intellinet-style cameras, which upload
#   `camera_tmp.jpg` and rename it onto `camera.jpg` (Intellinet user manual, FTP FAQ 9).
DEFAULT_TEMP_PATTERNS = (".*", "*.part", "*.filepart", "*.tmp", "*_tmp.*")

# WATCHFILES_FORCE_POLLING, watchfiles' own switch, sets watcher.polling: any value but these
# (and empty) means true, as watchfiles reads it.
WATCHFILES_POLLING_OFF = frozenset({"false", "disable", "disabled"})

# Where the system's time zone is read when site.timezone is empty and TZ is not set.
LOCALTIME = "/etc/localtime"
TIMEZONE_FILE = "/etc/timezone"  # Debian's plain-text zone name


def _range(lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    """A dataclass field whose value must lie in [lo, hi]."""
    return field(metadata={"min": lo, "max": hi}, **kw)


def _pattern(regex: str, hint: str, **kw: Any) -> Any:
    return field(metadata={"pattern": regex, "hint": hint}, **kw)


@dataclass(frozen=True, slots=True)
class PathsConfig:
    camera_root: Path = Path("/srv/hsid/cameras")
    state_dir: Path = Path("/var/lib/hsid")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = ""  # empty: embedded PostgreSQL under state_dir
    pool_min: int = _range(1, 100, default=1)
    pool_max: int = _range(1, 200, default=10)
    connect_timeout_seconds: float = _range(0.1, 300, default=10.0)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = ""  # empty: embedded redis-server under state_dir
    # Put before every key and pub/sub channel; channels ignore the database number, so
    # installs sharing one Redis need different prefixes. Empty: the reference's names.
    prefix: str = _pattern(r"[A-Za-z0-9_.:/-]{0,64}",
                           "up to 64 letters, digits or _ . : / - (e.g. 'garage:')", default="")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = _range(0, 65535, default=8000)
    max_body_bytes: int = _range(1024, 1 << 30, default=1 << 20)
    api_key_enabled: bool = False
    # "name:key" or bare "key" (named key-1, key-2, ...); hashed into api_keys at start-up.
    api_keys: tuple[str, ...] = ()
    frontend_logs_per_minute: int = _range(1, 100_000, default=120)
    # Where people reach the API from outside ("https://hsid.example.net"): alert links and
    # pictures are absolute URLs under it. Empty: they are paths ("/api/events/7/snapshot").
    public_url: str = _pattern(r"(https?://[^\s/?#@]+(/[^\s?#]*)?)?", "an http(s):// URL "
                               "such as https://hsid.example.net (or empty)", default="")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = _pattern(LOG_LEVEL_PATTERN, "a log level", default="info")
    db_level: str = _pattern(LOG_LEVEL_PATTERN, "a log level", default="info")
    db_buffer_records: int = _range(10, 1_000_000, default=10_000)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    max_attempts: int = _range(1, 100, default=3)
    max_length: int = _range(1, 10_000_000, default=10_000)
    retry_base_seconds: float = _range(0.0, 3600, default=1.0)


@dataclass(frozen=True, slots=True)
class WatcherConfig:
    settle_seconds: float = _range(0.0, 600, default=1.0)
    jpeg_settle_seconds: float = _range(0.0, 600, default=0.25)
    stall_seconds: float = _range(0.0, 86_400, default=30.0)  # then taken as it is
    startup_lookback_hours: float = _range(0.0, 24 * 365, default=24.0)
    offline_after_minutes: float = _range(0.0, 525_600, default=0.0)
    # Where a file's camera comes from (cameras/layout.py): a regex whose `camera` group,
    # searched in the file's path under the root, names it; then the top-level folder; a
    # file straight in the root belongs to `root_camera`.
    camera_pattern: str = field(default="", metadata={"regex_group": "camera"})
    root_camera: str = _pattern(r"(?=.*\S)[^/\x00]{1,64}", "a camera name of 1 to 64 "
                                "characters, without /", default="unsorted")
    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS
    # "auto": poll where inotify misses changes (network and overlay file systems).
    polling: bool | Literal["auto"] = "auto"
    poll_interval_seconds: float = _range(0.05, 3600, default=1.0)
    # A capture time (pipeline/capture_time.py) older than this before the snapshot arrived,
    # or later than its arrival, is not believed: the arrival time is used. 0: always.
    max_backlog_hours: float = _range(0.0, 24 * 365, default=72.0)


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    ttl_seconds: int = _range(1, 31 * 86_400, default=300)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    model: str = ""  # RT-DETRv2 ONNX file
    confidence: float = _range(0.0, 1.0, default=0.5)
    classes: tuple[str, ...] = COCO_DEFAULT_CLASSES
    batch_size: int = _range(1, 64, default=4)
    require_gpu: bool = False
    threads: int = _range(0, 256, default=0)  # 0: half the cores (the LLM gets the rest)
    max_pixels: int = _range(1, 1 << 31, default=50_000_000)  # refuses decompression bombs
    thumbnail_size: int = _range(16, 4096, default=320)


@dataclass(frozen=True, slots=True)
class AnalyzerConfig:
    model: str = ""  # GGUF file; empty: rule-based scoring only
    timeout_seconds: float = _range(1.0, 3600, default=60.0)
    n_ctx: int = _range(256, 131_072, default=4096)
    n_gpu_layers: int = _range(-1, 1000, default=-1)
    threads: int = _range(0, 256, default=0)  # 0: the cores the detector does not use
    risk_medium: int = _range(0, 100, default=30)
    risk_high: int = _range(0, 100, default=60)
    risk_critical: int = _range(0, 100, default=85)
    # Fair scheduling: a camera never takes more than this many analyses in a row while
    # another camera's job waits (fast path first, then batches round-robin).
    max_consecutive: int = _range(1, 1000, default=2)
    # LLM analyses per camera per clock hour; beyond it a camera's batches are scored by the
    # rules (fast-path snapshots still get the LLM). 30: a camera busy all hour closes a
    # batch every 90 s window (40 an hour) plus a fast path per episode; 30 keeps the LLM on
    # roughly every other of those, and at the 2-17 s per analysis of a CPU (BENCHMARKS.md)
    # caps one busy camera at about 8 minutes of LLM time an hour, so the LLM stays free
    # for the other cameras. 0: no budget.
    max_per_camera_hour: int = _range(0, 100_000, default=30)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    window_seconds: float = _range(0.1, 86_400, default=90.0)
    idle_seconds: float = _range(0.1, 86_400, default=30.0)
    max_detections: int = _range(1, 100_000, default=500)
    sweep_interval_seconds: float = _range(0.05, 1.0, default=1.0)
    fast_path_enabled: bool = True
    fast_path_classes: tuple[str, ...] = ("person",)
    fast_path_confidence: float = _range(0.0, 1.0, default=0.90)
    # A snapshot captured this long before it arrived is a backlog (an upload after an
    # outage): batched with the rest of its backlog by capture time, never with live ones.
    backlog_seconds: float = _range(1.0, 86_400, default=300.0)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: int = _range(1, 36_500, default=30)
    log_days: int = _range(1, 36_500, default=7)
    cleanup_time: str = _pattern(r"([01]\d|2[0-3]):[0-5]\d", "HH:MM", default="03:00")
    delete_images: bool = False


@dataclass(frozen=True, slots=True)
class GpuConfig:
    poll_seconds: float = _range(0.5, 3600, default=5.0)
    status_interval_seconds: float = _range(0.5, 3600, default=5.0)


@dataclass(frozen=True, slots=True)
class BaselinesConfig:
    enabled: bool = True  # false: no baseline updates, and none in the prompt
    decay: float = _range(0.01, 1.0, default=0.1)  # the newest hour's weight in the average
    min_samples: int = _range(1, 10_000, default=4)  # history a slot needs to be quoted


@dataclass(frozen=True, slots=True)
class SceneConfig:
    enabled: bool = True  # watch each camera's view for tamper (covered, blinded, turned)


# ImageNet's per-channel (R, G, B) statistics: what most image embedders were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _channels(lo: float, hi: float, default: tuple[float, ...]) -> Any:
    """A field of one number per colour channel (R, G, B), each in [lo, hi]."""
    return field(default=default, metadata={"length": 3, "each": (lo, hi)})


@dataclass(frozen=True, slots=True)
class EntitiesConfig:
    # Re-identification (entities/matcher.py): an ONNX image embedder, input f32 [N,3,H,W]
    # (RGB 0..1, then (x - mean) / std), output [N,D]. Empty: entities off.
    model: str = ""
    mean: tuple[float, ...] = _channels(-10.0, 10.0, IMAGENET_MEAN)
    std: tuple[float, ...] = _channels(1e-6, 10.0, IMAGENET_STD)
    threshold: float = _range(0.0, 1.0, default=0.80)  # cosine similarity: the same entity
    window_hours: float = _range(0.01, 24 * 365, default=24.0)  # entities seen this recently
    # Vehicles may have a model of their own (a vehicle re-id or CLIP image encoder);
    # empty: `model` embeds vehicles too, with mean, std and threshold above.
    vehicle_model: str = ""
    vehicle_mean: tuple[float, ...] = _channels(-10.0, 10.0, IMAGENET_MEAN)
    vehicle_std: tuple[float, ...] = _channels(1e-6, 10.0, IMAGENET_STD)
    vehicle_threshold: float = _range(0.0, 1.0, default=0.80)
    # How long the analyzer waits, after a detection, for its entity before it assesses
    # without one: embeddings are computed after the detections are batched.
    wait_seconds: float = _range(0.0, 60.0, default=2.0)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    # The house's time zone, an IANA name ("America/Los_Angeles"): night and day, the
    # prompt's local time, alert schedules without a zone of their own, baseline hours and
    # the daily cleanup time. Empty: the system's zone (site_zone).
    timezone: str = field(default="", metadata={"timezone": True})


ALERT_CHANNELS = ("log", "webhook", "mqtt", "apprise")


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # Channels of a rule whose `channels` is empty; each of ALERT_CHANNELS.
    default_channels: tuple[str, ...] = ("log",)
    webhook_url: str = ""  # POSTs the alert as JSON; empty: the webhook channel fails
    webhook_hmac_key: str = ""  # set: X-Hsid-Signature: sha256=<HMAC-SHA256 of the body>
    webhook_timeout_seconds: float = _range(0.5, 300, default=10.0)
    mqtt_url: str = ""  # mqtt://[user:password@]host[:port]; empty: the mqtt channel fails
    mqtt_topic: str = "hsid/alerts"  # the alert goes to <topic>/<camera_id>
    # Apprise URLs (ntfy://, pover://, tgram://, ...): the apprise channel sends to each,
    # with the annotated snapshot attached. Secrets: redacted in the API and the logs.
    apprise_urls: tuple[str, ...] = ()
    image_width: int = _range(64, 7680, default=1280)  # pictures sent: at most this wide
    max_attempts: int = _range(1, 100, default=5)  # per channel
    retry_base_seconds: float = _range(0.0, 3600, default=5.0)  # doubled after each failure
    poll_seconds: float = _range(0.05, 60, default=1.0)


# An MQTT topic prefix: words separated by "/", no wildcards, no empty levels.
TOPIC_PREFIX = r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    # Home Assistant through MQTT discovery (hsid/homeassistant/). Empty url: off.
    url: str = ""  # mqtt://[user:password@]host[:port], or mqtts:// for TLS
    discovery_prefix: str = _pattern(TOPIC_PREFIX, "MQTT topic levels such as "
                                     "homeassistant", default="homeassistant")
    topic_prefix: str = _pattern(TOPIC_PREFIX, "MQTT topic levels such as hsid",
                                 default="hsid")
    # A camera's person/vehicle/animal sensor turns off this long after its last detection.
    clear_seconds: float = _range(1.0, 86_400, default=30.0)


@dataclass(frozen=True, slots=True)
class Config:
    paths: PathsConfig = PathsConfig()
    site: SiteConfig = SiteConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    queues: QueueConfig = QueueConfig()
    watcher: WatcherConfig = WatcherConfig()
    dedupe: DedupeConfig = DedupeConfig()
    detector: DetectorConfig = DetectorConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    batch: BatchConfig = BatchConfig()
    retention: RetentionConfig = RetentionConfig()
    gpu: GpuConfig = GpuConfig()
    alerts: AlertsConfig = AlertsConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    scene: SceneConfig = SceneConfig()
    mqtt: MqttConfig = MqttConfig()
    entities: EntitiesConfig = EntitiesConfig()

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
        """A copy with `{section: {key: value}}` applied and validated (tests, `hsid demo`)."""
        return _apply(self, overrides, source="override")


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file (if any), apply environment overrides, validate, freeze.

    `path=None` reads /etc/hsid/config.toml when it exists. Raises ConfigError naming the
    key and the value for unknown keys, wrong types and out-of-range values.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    config = _apply(Config(), raw, source=str(path))
    return _apply(config, _env_overrides(environ), source="environment")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, (section, key) in REFERENCE_ENV_NAMES.items():
        if name in environ:
            overrides.setdefault(section, {})[key] = environ[name]
    if force_polling := environ.get("WATCHFILES_FORCE_POLLING", "").strip():
        off = force_polling.lower() in WATCHFILES_POLLING_OFF
        overrides.setdefault("watcher", {})["polling"] = "false" if off else "true"
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        overrides.setdefault(section, {})[key] = value
    return overrides


def _apply(config: Config, raw: Mapping[str, Any], source: str) -> Config:
    sections = {f.name: f for f in fields(Config)}
    updated: dict[str, Any] = {}
    for section_name, values in raw.items():
        if section_name not in sections:
            raise ConfigError(f"unknown config section [{section_name}] (from {source})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section [{section_name}] must be a table, got {values!r}")
        section = getattr(config, section_name)
        updated[section_name] = _apply_section(section_name, section, values, source)
    config = replace(config, **updated)
    _check_cross_field(config)
    return config


def _apply_section(name: str, section: Any, values: Mapping[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(type(section))
    known = {f.name: f for f in fields(section)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {dotted} = {value!r} (from {source})")
        parsed = _coerce(dotted, value, hints[key])
        _check_field(dotted, parsed, known[key].metadata)
        changes[key] = parsed
    return replace(section, **changes)


def _coerce(dotted: str, value: Any, hint: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type, or raise naming it."""
    from_env = isinstance(value, str)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key {dotted} = {value!r}: expected {expected}")

    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # bool | Literal["auto"]
        words = [word for arg in typing.get_args(hint) for word in typing.get_args(arg)]
        if isinstance(value, str) and value.strip().lower() in words:
            return value.strip().lower()
        if isinstance(value, bool) or from_env:
            with contextlib.suppress(ConfigError):
                return _coerce(dotted, value, bool)
        raise bad("true, false or " + " or ".join(repr(word) for word in words))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise bad("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise bad("an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise bad("a path")
    if hint == tuple[float, ...]:
        items = _split_list(value) if from_env else value
        try:
            numbers = tuple(float(_coerce(dotted, i, float)) for i in items)
        except (ConfigError, TypeError, ValueError):
            raise bad("a list of numbers") from None
        if isinstance(items, list):
            return numbers
        raise bad("a list of numbers")
    if typing.get_origin(hint) is tuple or isinstance(hint, types.GenericAlias):
        items = _split_list(value) if from_env else value
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return tuple(i for i in items if i)
        raise bad("a list of strings")
    raise ConfigError(f"config key {dotted}: unsupported type {hint!r}")  # a bug in this module


def _split_list(value: str) -> Any:
    """An environment list: a JSON array, or comma-separated words."""
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None
    return [part.strip() for part in text.split(",")]


def _check_field(dotted: str, value: Any, metadata: Mapping[str, Any]) -> None:
    if (length := metadata.get("length")) is not None and len(value) != length:
        raise ConfigError(f"config key {dotted} = {list(value)!r}: expected {length} numbers")
    if (each := metadata.get("each")) and not all(each[0] <= v <= each[1] for v in value):
        raise ConfigError(f"config key {dotted} = {list(value)!r}: each must be between "
                          f"{each[0]} and {each[1]}")
    lo, hi = metadata.get("min"), metadata.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"config key {dotted} = {value!r}: must be between {lo} and {hi}")
    if (pattern := metadata.get("pattern")) and not re.fullmatch(pattern, value):
        raise ConfigError(f"config key {dotted} = {value!r}: expected {metadata['hint']}")
    if metadata.get("timezone") and value and _zone(value) is None:
        raise ConfigError(f"config key {dotted} = {value!r}: expected an IANA time zone "
                          "name such as Europe/Berlin (or empty for the system's zone)")
    if (group := metadata.get("regex_group")) and value:
        try:
            compiled = re.compile(value)
        except re.error as err:
            raise ConfigError(
                f"config key {dotted} = {value!r}: not a regular expression ({err})") from err
        if group not in compiled.groupindex:
            raise ConfigError(
                f"config key {dotted} = {value!r}: needs a named group (?P<{group}>...)")


def _check_cross_field(config: Config) -> None:
    a = config.analyzer
    if not a.risk_medium < a.risk_high < a.risk_critical:
        raise ConfigError(
            "config keys analyzer.risk_medium < risk_high < risk_critical must rise, got "
            f"{a.risk_medium}, {a.risk_high}, {a.risk_critical}"
        )
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError(
            f"config key database.pool_min = {config.database.pool_min}: "
            f"must not exceed database.pool_max = {config.database.pool_max}"
        )
    if unknown := [c for c in config.alerts.default_channels if c not in ALERT_CHANNELS]:
        raise ConfigError(
            f"config key alerts.default_channels = {list(config.alerts.default_channels)!r}: "
            f"unknown channel {', '.join(unknown)}; expected some of {', '.join(ALERT_CHANNELS)}"
        )
    for dotted, url in (("alerts.mqtt_url", config.alerts.mqtt_url),
                        ("mqtt.url", config.mqtt.url)):
        if url and not re.fullmatch(r"mqtts?://([^@/]+@)?[^@/:]+(:\d+)?/?", url):
            raise ConfigError(
                f"config key {dotted} = {_redact_url(url)!r}: "
                "expected mqtt://[user:password@]host[:port] (or mqtts://)"
            )


def site_zone(site: SiteConfig, environ: Mapping[str, str] | None = None) -> tzinfo:
    """The house's time zone: `site.timezone`, else the system's (the TZ variable, else
    /etc/localtime), else UTC. A zone with its rules (DST included), never a fixed offset
    unless the system's zone can be read no other way."""
    environ = os.environ if environ is None else environ
    return _site_zone(site.timezone, environ.get("TZ"))


def zone_name(zone: tzinfo) -> str:
    """How a zone is shown: its IANA key ("Europe/Berlin"), else its name."""
    return getattr(zone, "key", None) or str(zone)


@functools.lru_cache(maxsize=8)
def _site_zone(name: str, tz_variable: str | None) -> tzinfo:
    if name:
        zone = _zone(name)
        if zone is None:  # validated at load; only a tz database removed since gets here
            raise ConfigError(f"config key site.timezone = {name!r}: time zone not found")
        return zone
    return _system_zone(tz_variable)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _system_zone(tz_variable: str | None) -> tzinfo:
    """TZ (":Europe/Berlin", "Europe/Berlin" or a file), else the zone /etc/localtime links
    to, else /etc/timezone, else the rules in /etc/localtime itself. A TZ holding POSIX rules
    ("CET-1CEST,M3.5.0,M10.5.0/3") is no zone name: today's offset is the best left then."""
    if tz_variable:
        name = tz_variable.removeprefix(":")
        if os.path.isabs(name):
            return _zone_file(name) or ZoneInfo("UTC")
        return _zone(name) or datetime.now().astimezone().tzinfo or ZoneInfo("UTC")
    zone = _zone_file(LOCALTIME)
    if zone is not None and zone_name(zone) != LOCALTIME:
        return zone
    with contextlib.suppress(OSError):
        zone = _zone(Path(TIMEZONE_FILE).read_text(encoding="utf-8").strip()) or zone
    return zone or ZoneInfo("UTC")


def _zone_file(path: str) -> ZoneInfo | None:
    """The zone a tz file is (by its name under a zoneinfo folder, when it is linked into
    one), or the rules it holds under the file's own name."""
    target = os.path.realpath(path)
    if "/zoneinfo/" in target and (zone := _zone(target.split("/zoneinfo/", 1)[1])):
        return zone
    with contextlib.suppress(OSError, ValueError), open(path, "rb") as file:
        return ZoneInfo.from_file(file, key=path)
    return None


def alert_settings(config: Config) -> AlertsConfig:
    """[alerts] as the channels use it: an empty mqtt_url means the Home Assistant broker
    ([mqtt] url), so one broker setting serves both."""
    if config.alerts.mqtt_url or not config.mqtt.url:
        return config.alerts
    return replace(config.alerts, mqtt_url=config.mqtt.url)


def redacted(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain JSON-able data, secrets replaced."""
    out: dict[str, dict[str, Any]] = {}
    for section_field in fields(config):
        section = getattr(config, section_field.name)
        values: dict[str, Any] = {}
        for f in fields(section):
            value = getattr(section, f.name)
            values[f.name] = list(value) if isinstance(value, tuple) else (
                str(value) if isinstance(value, Path) else value
            )
        out[section_field.name] = values
    out["api"]["api_keys"] = ["***"] * len(config.api.api_keys)
    for section, key in (("database", "url"), ("redis", "url"), ("alerts", "mqtt_url"),
                         ("mqtt", "url")):
        out[section][key] = _redact_url(out[section][key])
    # An Apprise URL is a secret as a whole (tokens sit in its host and path): the scheme
    # says which service it is, and no more is shown.
    out["alerts"]["apprise_urls"] = [url.split("://", 1)[0] + "://***" if "://" in url
                                     else "***" for url in config.alerts.apprise_urls]
    if config.alerts.webhook_hmac_key:
        out["alerts"]["webhook_hmac_key"] = "***"
    return out


def _redact_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:secret@host/db."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True, slots=True)
class SystemdEnvironment:
    """What systemd tells the process through its environment (absent when run by hand)."""

    journal: bool = False  # JOURNAL_STREAM: stdout/stderr go to the journal
    notify_socket: str | None = None  # NOTIFY_SOCKET: where sd_notify messages go
    watchdog_usec: int | None = None  # WATCHDOG_USEC: ping at least this often


def systemd_environment(environ: Mapping[str, str] | None = None) -> SystemdEnvironment:
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    return SystemdEnvironment(
        journal=bool(environ.get("JOURNAL_STREAM")),
        notify_socket=environ.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(usec) if usec.isdigit() and int(usec) > 0 else None,
    )
