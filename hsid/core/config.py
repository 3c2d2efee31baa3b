"""Configuration: config.toml plus environment overrides, validated once into frozen sections.

Precedence, lowest first: built-in defaults, the TOML file, the reference's plain
environment names (DATABASE_URL, REDIS_URL, ...) and watchfiles' WATCHFILES_FORCE_POLLING,
then `HSID_<SECTION>__<KEY>`.
The sections are frozen pydantic models. TOML values must have the key's type (an integer
for an integer, a list for a list); strings, as every environment value is, are parsed:
numbers, booleans (1/true/yes/on, 0/false/no/off) and lists (a JSON array, or comma-separated
words). Every error names the key and the value, so start-up stops with one clear line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.functional_validators import field_validator, model_validator
from pydantic.json_schema import JsonDict

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

LOG_LEVEL_PATTERN = r"^(?i:debug|info|warning|error|critical)\Z"

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

# --- Key types. Strict: a TOML value must have the key's type (no 1 for true, no 8.0 for 8).
# A string, as every environment value is, is parsed first; what does not parse goes on
# unchanged, and the strict check's error names the key and the value.

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}


def _from_text(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def before(value: Any) -> Any:
        with contextlib.suppress(ValueError, LookupError):
            return parse(value) if isinstance(value, str) else value
        return value

    return before


def _parse_list(value: Any, item: Callable[[Any], Any] = lambda item: item) -> Any:
    """A list; from a string, a JSON array or comma-separated words. Empty items dropped."""
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    elif isinstance(value, str):
        value = [word.strip() for word in value.split(",")]
    return tuple(item(i) for i in value if i != "") if isinstance(value, list | tuple) else value


def _parse_polling(value: Any) -> bool | str:
    if isinstance(value, str):
        value = _BOOL_WORDS.get(value.strip().lower(), value.strip().lower())
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("expected true, false or 'auto'")


def _channels(lo: float, hi: float) -> AfterValidator:
    """One number per colour channel (R, G, B), each in [lo, hi]."""

    def check(value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) != 3:
            raise ValueError("expected 3 numbers")
        if not all(lo <= v <= hi for v in value):
            raise ValueError(f"each must be between {lo} and {hi}")
        return value

    return AfterValidator(check)


def _known_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    if unknown := [c for c in channels if c not in ALERT_CHANNELS]:
        raise ValueError(f"unknown channel {', '.join(unknown)}; "
                         f"expected some of {', '.join(ALERT_CHANNELS)}")
    return channels


def _mqtt_url(url: str) -> str:
    if url and not re.fullmatch(r"mqtts?://([^@/]+@)?[^@/:]+(:\d+)?/?", url):
        raise ValueError("expected mqtt://[user:password@]host[:port] (or mqtts://)")
    return url


_parse_float = _from_text(float)
Bool = Annotated[bool, BeforeValidator(_from_text(lambda text: _BOOL_WORDS[text.strip().lower()]))]
Int = Annotated[int, BeforeValidator(_from_text(int))]
Float = Annotated[float, BeforeValidator(_parse_float)]
FsPath = Annotated[Path, BeforeValidator(_from_text(lambda text: Path(text) if text else text))]
Strings = Annotated[tuple[str, ...], BeforeValidator(_parse_list)]
# An after-check is put before the parsing, so that its error shows the parsed value.
_numbers = BeforeValidator(lambda value: _parse_list(value, _parse_float))
Mean = Annotated[tuple[float, ...], _channels(-10.0, 10.0), _numbers]
Std = Annotated[tuple[float, ...], _channels(1e-6, 10.0), _numbers]
Channels = Annotated[tuple[str, ...], AfterValidator(_known_channels), BeforeValidator(_parse_list)]
MqttUrl = Annotated[str, AfterValidator(_mqtt_url)]

# Secrets (json_schema_extra={"secret": mask}) as redacted() shows them: a URL with its
# password hidden, nothing of the value, or an Apprise URL's scheme alone (its tokens sit
# in the host and path).
_MASKS: dict[str, Callable[[str], str]] = {
    "password": lambda url: _redact_url(url),
    "whole": lambda value: "***" if value else value,
    "scheme": lambda url: (url.split("://", 1)[0] + "://***" if "://" in url else "***") if url
    else url,
}
PASSWORD: JsonDict = {"secret": "password"}
WHOLE: JsonDict = {"secret": "whole"}
SCHEME: JsonDict = {"secret": "scheme"}

# pydantic's type errors in the words of the old hand-written checks.
_EXPECTED = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
             "string_type": "a string", "tuple_type": "a list", "is_instance_of": "a path"}


class Section(BaseModel):
    """A frozen config section (and Config itself, the sections): unknown keys are errors;
    a key's `description` says in words what its pattern expects."""

    # Patterns are Python's re (root_camera's look-ahead), anchored with ^...\Z as fullmatch.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, regex_engine="python-re")


class PathsConfig(Section):
    camera_root: FsPath = Path("/srv/hsid/cameras")
    state_dir: FsPath = Path("/var/lib/hsid")


class DatabaseConfig(Section):
    # Empty: embedded PostgreSQL under state_dir.
    url: str = Field("", json_schema_extra=PASSWORD)
    pool_min: Int = Field(1, ge=1, le=100)
    pool_max: Int = Field(10, ge=1, le=200)
    connect_timeout_seconds: Float = Field(10.0, ge=0.1, le=300)

    @model_validator(mode="after")
    def _pool(self) -> DatabaseConfig:
        if self.pool_min > self.pool_max:
            raise ValueError(f"config key database.pool_min = {self.pool_min}: "
                             f"must not exceed database.pool_max = {self.pool_max}")
        return self


class RedisConfig(Section):
    # Empty: embedded redis-server under state_dir.
    url: str = Field("", json_schema_extra=PASSWORD)
    # Put before every key and pub/sub channel; channels ignore the database number, so
    # installs sharing one Redis need different prefixes. Empty: the reference's names.
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_.:/-]{0,64}\Z", description=(
        "up to 64 letters, digits or _ . : / - (e.g. 'garage:')"))


class ApiConfig(Section):
    host: str = "127.0.0.1"
    port: Int = Field(8000, ge=0, le=65535)
    max_body_bytes: Int = Field(1 << 20, ge=1024, le=1 << 30)
    api_key_enabled: Bool = False
    # "name:key" or bare "key" (named key-1, key-2, ...); hashed into api_keys at start-up.
    api_keys: Strings = Field((), json_schema_extra=WHOLE)
    frontend_logs_per_minute: Int = Field(120, ge=1, le=100_000)
    # Where people reach the API from outside ("https://hsid.example.net"): alert links and
    # pictures are absolute URLs under it. Empty: they are paths ("/api/events/7/snapshot").
    public_url: str = Field("", pattern=r"^(https?://[^\s/?#@]+(/[^\s?#]*)?)?\Z", description=(
        "an http(s):// URL such as https://hsid.example.net (or empty)"))


class LoggingConfig(Section):
    level: str = Field("info", pattern=LOG_LEVEL_PATTERN, description="a log level")
    db_level: str = Field("info", pattern=LOG_LEVEL_PATTERN, description="a log level")
    db_buffer_records: Int = Field(10_000, ge=10, le=1_000_000)


class QueueConfig(Section):
    max_attempts: Int = Field(3, ge=1, le=100)
    max_length: Int = Field(10_000, ge=1, le=10_000_000)
    retry_base_seconds: Float = Field(1.0, ge=0.0, le=3600)


class WatcherConfig(Section):
    settle_seconds: Float = Field(1.0, ge=0.0, le=600)
    jpeg_settle_seconds: Float = Field(0.25, ge=0.0, le=600)
    stall_seconds: Float = Field(30.0, ge=0.0, le=86_400)  # then taken as it is
    startup_lookback_hours: Float = Field(24.0, ge=0.0, le=24 * 365)
    offline_after_minutes: Float = Field(0.0, ge=0.0, le=525_600)
    # Where a file's camera comes from (cameras/layout.py): a regex whose `camera` group,
    # searched in the file's path under the root, names it; then the top-level folder; a
    # file straight in the root belongs to `root_camera`.
    camera_pattern: str = ""
    root_camera: str = Field("unsorted", pattern=r"^(?=.*\S)[^/\x00]{1,64}\Z", description=(
        "a camera name of 1 to 64 characters, without /"))
    temp_patterns: Strings = DEFAULT_TEMP_PATTERNS
    # "auto": poll where inotify misses changes (network and overlay file systems).
    polling: Annotated[bool | Literal["auto"], BeforeValidator(_parse_polling)] = "auto"
    poll_interval_seconds: Float = Field(1.0, ge=0.05, le=3600)
    # A capture time (pipeline/capture_time.py) older than this before the snapshot arrived,
    # or later than its arrival, is not believed: the arrival time is used. 0: always.
    max_backlog_hours: Float = Field(72.0, ge=0.0, le=24 * 365)

    @field_validator("camera_pattern")
    @classmethod
    def _camera_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression ({err})") from err
        if value and "camera" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<camera>...)")
        return value


class DedupeConfig(Section):
    ttl_seconds: Int = Field(300, ge=1, le=31 * 86_400)


class DetectorConfig(Section):
    model: str = ""  # RT-DETRv2 ONNX file
    confidence: Float = Field(0.5, ge=0.0, le=1.0)
    classes: Strings = COCO_DEFAULT_CLASSES
    batch_size: Int = Field(4, ge=1, le=64)
    require_gpu: Bool = False
    threads: Int = Field(0, ge=0, le=256)  # 0: half the cores (the LLM gets the rest)
    max_pixels: Int = Field(50_000_000, ge=1, le=1 << 31)  # refuses decompression bombs
    thumbnail_size: Int = Field(320, ge=16, le=4096)


class AnalyzerConfig(Section):
    model: str = ""  # GGUF file; empty: rule-based scoring only
    timeout_seconds: Float = Field(60.0, ge=1.0, le=3600)
    n_ctx: Int = Field(4096, ge=256, le=131_072)
    n_gpu_layers: Int = Field(-1, ge=-1, le=1000)
    threads: Int = Field(0, ge=0, le=256)  # 0: the cores the detector does not use
    risk_medium: Int = Field(30, ge=0, le=100)
    risk_high: Int = Field(60, ge=0, le=100)
    risk_critical: Int = Field(85, ge=0, le=100)
    # Fair scheduling: a camera never takes more than this many analyses in a row while
    # another camera's job waits (fast path first, then batches round-robin).
    max_consecutive: Int = Field(2, ge=1, le=1000)
    # LLM analyses per camera per clock hour; beyond it a camera's batches are scored by the
    # rules (fast-path snapshots still get the LLM). 30: a camera busy all hour closes a
    # batch every 90 s window (40 an hour) plus a fast path per episode; 30 keeps the LLM on
    # roughly every other of those, and at the 2-17 s per analysis of a CPU (BENCHMARKS.md)
    # caps one busy camera at about 8 minutes of LLM time an hour, so the LLM stays free
    # for the other cameras. 0: no budget.
    max_per_camera_hour: Int = Field(30, ge=0, le=100_000)

    @model_validator(mode="after")
    def _risk_levels_rise(self) -> AnalyzerConfig:
        if not self.risk_medium < self.risk_high < self.risk_critical:
            raise ValueError(
                "config keys analyzer.risk_medium < risk_high < risk_critical must rise, got "
                f"{self.risk_medium}, {self.risk_high}, {self.risk_critical}")
        return self


class BatchConfig(Section):
    window_seconds: Float = Field(90.0, ge=0.1, le=86_400)
    idle_seconds: Float = Field(30.0, ge=0.1, le=86_400)
    max_detections: Int = Field(500, ge=1, le=100_000)
    sweep_interval_seconds: Float = Field(1.0, ge=0.05, le=1.0)
    fast_path_enabled: Bool = True
    fast_path_classes: Strings = ("person",)
    fast_path_confidence: Float = Field(0.90, ge=0.0, le=1.0)
    # A snapshot captured this long before it arrived is a backlog (an upload after an
    # outage): batched with the rest of its backlog by capture time, never with live ones.
    backlog_seconds: Float = Field(300.0, ge=1.0, le=86_400)


class RetentionConfig(Section):
    days: Int = Field(30, ge=1, le=36_500)
    log_days: Int = Field(7, ge=1, le=36_500)
    cleanup_time: str = Field("03:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d\Z",
                              description="HH:MM")
    delete_images: Bool = False


class GpuConfig(Section):
    poll_seconds: Float = Field(5.0, ge=0.5, le=3600)
    status_interval_seconds: Float = Field(5.0, ge=0.5, le=3600)


class BaselinesConfig(Section):
    enabled: Bool = True  # false: no baseline updates, and none in the prompt
    decay: Float = Field(0.1, ge=0.01, le=1.0)  # the newest hour's weight in the average
    min_samples: Int = Field(4, ge=1, le=10_000)  # history a slot needs to be quoted


class SceneConfig(Section):
    enabled: Bool = True  # watch each camera's view for tamper (covered, blinded, turned)


# ImageNet's per-channel (R, G, B) statistics: what most image embedders were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EntitiesConfig(Section):
    # Re-identification (entities/matcher.py): an ONNX image embedder, input f32 [N,3,H,W]
    # (RGB 0..1, then (x - mean) / std), output [N,D]. Empty: entities off.
    model: str = ""
    mean: Mean = IMAGENET_MEAN
    std: Std = IMAGENET_STD
    threshold: Float = Field(0.80, ge=0.0, le=1.0)  # cosine similarity: the same entity
    window_hours: Float = Field(24.0, ge=0.01, le=24 * 365)  # entities seen this recently
    # Vehicles may have a model of their own (a vehicle re-id or CLIP image encoder);
    # empty: `model` embeds vehicles too, with mean, std and threshold above.
    vehicle_model: str = ""
    vehicle_mean: Mean = IMAGENET_MEAN
    vehicle_std: Std = IMAGENET_STD
    vehicle_threshold: Float = Field(0.80, ge=0.0, le=1.0)
    # How long the analyzer waits, after a detection, for its entity before it assesses
    # without one: embeddings are computed after the detections are batched.
    wait_seconds: Float = Field(2.0, ge=0.0, le=60.0)


class SiteConfig(Section):
    # The house's time zone, an IANA name ("America/Los_Angeles"): night and day, the
    # prompt's local time, alert schedules without a zone of their own, baseline hours and
    # the daily cleanup time. Empty: the system's zone (site_zone).
    timezone: str = ""

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        if value and _zone(value) is None:
            raise ValueError("expected an IANA time zone name such as Europe/Berlin "
                             "(or empty for the system's zone)")
        return value


AlertChannel = Literal["log", "webhook", "mqtt", "apprise"]
ALERT_CHANNELS: tuple[AlertChannel, ...] = get_args(AlertChannel)


class AlertsConfig(Section):
    # Channels of a rule whose `channels` is empty; each of ALERT_CHANNELS.
    default_channels: Channels = ("log",)
    # POSTs the alert as JSON; empty: the webhook channel fails. Shown as its scheme alone:
    # Slack, Discord and most webhook URLs carry their token in the path.
    webhook_url: str = Field("", json_schema_extra=SCHEME)
    # Set: X-Hsid-Signature: sha256=<HMAC-SHA256 of the body>.
    webhook_hmac_key: str = Field("", json_schema_extra=WHOLE)
    webhook_timeout_seconds: Float = Field(10.0, ge=0.5, le=300)
    # mqtt://[user:password@]host[:port]; empty: [mqtt] url, else the mqtt channel fails.
    mqtt_url: MqttUrl = Field("", json_schema_extra=PASSWORD)
    mqtt_topic: str = "hsid/alerts"  # the alert goes to <topic>/<camera_id>
    # Apprise URLs (ntfy://, pover://, tgram://, ...): the apprise channel sends to each,
    # with the annotated snapshot attached. Secrets: redacted in the API and the logs.
    apprise_urls: Strings = Field((), json_schema_extra=SCHEME)
    image_width: Int = Field(1280, ge=64, le=7680)  # pictures sent: at most this wide
    max_attempts: Int = Field(5, ge=1, le=100)  # per channel
    retry_base_seconds: Float = Field(5.0, ge=0.0, le=3600)  # doubled after each failure
    poll_seconds: Float = Field(1.0, ge=0.05, le=60)


# An MQTT topic prefix: words separated by "/", no wildcards, no empty levels.
TOPIC_PREFIX = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\Z"


class MqttConfig(Section):
    # Home Assistant through MQTT discovery (hsid/homeassistant/). Empty url: off.
    # mqtt://[user:password@]host[:port], or mqtts:// for TLS.
    url: MqttUrl = Field("", json_schema_extra=PASSWORD)
    discovery_prefix: str = Field("homeassistant", pattern=TOPIC_PREFIX, description=(
        "MQTT topic levels such as homeassistant"))
    topic_prefix: str = Field("hsid", pattern=TOPIC_PREFIX, description=(
        "MQTT topic levels such as hsid"))
    # A camera's person/vehicle/animal sensor turns off this long after its last detection.
    clear_seconds: Float = Field(30.0, ge=1.0, le=86_400)


class Config(Section):
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
    """`config` with the sections' keys in `raw` replaced, validated as a whole."""
    data = dict(config)
    for name, values in raw.items():
        section = data.get(name)
        data[name] = ({**dict(section), **values}
                      if isinstance(section, Section) and isinstance(values, Mapping)
                      else values)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise _config_error(err, source) from err


def _config_error(error: ValidationError, source: str) -> ConfigError:
    """pydantic's first error as one line naming the key (`detector.confidence = 1.5: ...`)."""
    first = error.errors()[0]
    loc, value, kind = first["loc"], first["input"], first["type"]
    dotted = ".".join(map(str, loc[:2])) + "".join(f"[{i}]" for i in loc[2:])
    if kind == "extra_forbidden":
        what = f"section [{dotted}]" if len(loc) == 1 else f"key {dotted} = {value!r}"
        return ConfigError(f"unknown config {what} (from {source})")
    if len(loc) == 1 and kind == "model_type":
        return ConfigError(f"config section [{dotted}] must be a table, got {value!r}")
    message = f"expected {_EXPECTED[kind]}" if kind in _EXPECTED else first["msg"]
    if kind == "value_error":
        message = str(first["ctx"]["error"])
    elif kind == "string_pattern_mismatch":  # the key's description says what it expects
        section: Any = Config.model_fields[str(loc[0])].annotation
        message = f"expected {section.model_fields[str(loc[1])].description}"
    if len(loc) == 1:  # a check across a section's keys: the message names them
        return ConfigError(message)
    shown = list(value) if isinstance(value, tuple) else (
        _redact_url(value) if isinstance(value, str) else value)
    return ConfigError(f"config key {dotted} = {shown!r}: {message}")


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
    return config.alerts.model_copy(update={"mqtt_url": config.mqtt.url})


def redacted(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain JSON-able data, secrets (the keys marked
    `secret`) replaced as _MASKS says."""
    out: dict[str, dict[str, Any]] = {}
    for name, section in config:
        values = out[name] = section.model_dump(mode="json")
        for key, field in type(section).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and (mask := _MASKS.get(str(extra.get("secret")))):
                value = values[key]
                values[key] = [mask(v) for v in value] if isinstance(value, list) else mask(value)
    return out


def _redact_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:secret@host/db."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)  # redis://:secret@host too


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
