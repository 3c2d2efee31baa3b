"""Configuration: defaults, TOML, environment overrides, and the named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hsid.core.config import (
    AnalyzerConfig,
    Config,
    DetectorConfig,
    PathsConfig,
    SiteConfig,
    alert_settings,
    load_config,
    redacted,
    site_zone,
    systemd_environment,
    zone_name,
)
from hsid.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_documented_config_toml_equals_built_in_defaults() -> None:
    assert load_config(REPO_ROOT / "config.toml", environ={}) == Config()


def test_defaults_match_the_reference_timings() -> None:
    config = load_config(None, environ={})
    assert (config.batch.window_seconds, config.batch.idle_seconds) == (90.0, 30.0)
    assert config.dedupe.ttl_seconds == 300
    assert (config.retention.days, config.retention.log_days) == (30, 7)
    assert config.retention.cleanup_time == "03:00"
    assert config.gpu.poll_seconds == 5.0
    assert config.api.api_key_enabled is False


def test_toml_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text('[detector]\nconfidence = 0.7\nclasses = ["person"]\n[api]\nport = 9000\n')
    config = load_config(path, environ={})
    assert config.detector.confidence == 0.7
    assert config.detector.classes == ("person",)
    assert config.api.port == 9000


def test_environment_overrides_toml(tmp_path: Path) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text("[batch]\nwindow_seconds = 60\n")
    config = load_config(path, environ={
        "HSID_BATCH__WINDOW_SECONDS": "12.5",
        "HSID_DETECTOR__CLASSES": "person, car",
        "HSID_BATCH__FAST_PATH_ENABLED": "false",
        "HSID_DETECTOR__REQUIRE_GPU": "yes",
    })
    assert config.batch.window_seconds == 12.5
    assert config.detector.classes == ("person", "car")
    assert config.batch.fast_path_enabled is False
    assert config.detector.require_gpu is True


def test_reference_environment_names_are_honoured() -> None:
    config = load_config(None, environ={
        "DATABASE_URL": "postgresql://u:secret@db/hsid",
        "REDIS_URL": "redis://cache:6379/2",
        "RETENTION_DAYS": "14",
        "LOG_RETENTION_DAYS": "3",
        "DEDUPE_TTL_SECONDS": "60",
        "API_KEY_ENABLED": "true",
        "API_KEYS": "alice:k1,k2",
    })
    assert config.database.url == "postgresql://u:secret@db/hsid"
    assert config.redis.url == "redis://cache:6379/2"
    assert (config.retention.days, config.retention.log_days) == (14, 3)
    assert config.dedupe.ttl_seconds == 60
    assert config.api.api_key_enabled is True
    assert config.api.api_keys == ("alice:k1", "k2")
    shown = redacted(config)
    assert "secret" not in str(shown)
    assert shown["api"]["api_keys"] == ["***", "***"]


def test_redis_prefix_is_read_from_toml_and_environment(tmp_path: Path) -> None:
    assert load_config(None, environ={}).redis.prefix == ""  # the reference's key names
    path = tmp_path / "hsid.toml"
    path.write_text('[redis]\nurl = "redis://cache:6379/2"\nprefix = "garage:"\n')
    assert load_config(path, environ={}).redis.prefix == "garage:"
    config = load_config(path, environ={"HSID_REDIS__PREFIX": "site-b/hsid:"})
    assert (config.redis.url, config.redis.prefix) == ("redis://cache:6379/2", "site-b/hsid:")
    assert redacted(config)["redis"]["prefix"] == "site-b/hsid:"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"HSID_REDIS__PREFIX": "two words"})
    assert "redis.prefix = 'two words'" in str(info.value)


def test_prefixed_name_wins_over_reference_name() -> None:
    config = load_config(None, environ={"RETENTION_DAYS": "14", "HSID_RETENTION__DAYS": "9"})
    assert config.retention.days == 9


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"HSID_DETECTOR__CONFIDENCE": "high"}, "detector.confidence = 'high'"),
        ({"HSID_DETECTOR__CONFIDENCE": "1.5"}, "detector.confidence = 1.5"),
        ({"HSID_API__PORT": "70000"}, "api.port = 70000"),
        ({"HSID_API__PORT": "80.5"}, "api.port = '80.5'"),
        ({"HSID_BATCH__FAST_PATH_ENABLED": "maybe"}, "batch.fast_path_enabled = 'maybe'"),
        ({"HSID_RETENTION__CLEANUP_TIME": "3am"}, "retention.cleanup_time = '3am'"),
        ({"HSID_DETECTOR__COLOUR": "red"}, "detector.colour"),
        ({"HSID_CAMERAS__ROOT": "/x"}, "[cameras]"),
        ({"RETENTION_DAYS": "0"}, "retention.days = 0"),
        ({"HSID_ANALYZER__RISK_HIGH": "20"}, "risk_medium < risk_high < risk_critical"),
        ({"HSID_WATCHER__POLLING": "sometimes"}, "watcher.polling = 'sometimes'"),
        ({"HSID_WATCHER__ROOT_CAMERA": "a/b"}, "watcher.root_camera = 'a/b'"),
        ({"HSID_WATCHER__POLL_INTERVAL_SECONDS": "0"}, "watcher.poll_interval_seconds = 0"),
    ],
)
def test_bad_environment_values_name_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[detector]\nconfidence = "x"\n', "detector.confidence = 'x'"),
        ("[detector]\nbatch_size = 0\n", "detector.batch_size = 0"),
        ("[detector]\nclasses = [1, 2]\n", "detector.classes"),
        ("[paths]\nunknown = 1\n", "paths.unknown"),
        ("[api]\napi_key_enabled = 1\n", "api.api_key_enabled = 1"),
        ("detector = 3\n", "[detector]"),
        ("[detector\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert named in str(info.value)


def test_camera_keys_are_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text('[watcher]\ncamera_pattern = \'^NVR/(?P<camera>[^/]+)/\'\n'
                    'root_camera = "Briefkasten"\ntemp_patterns = ["*.uploading"]\n'
                    'polling = true\npoll_interval_seconds = 5\n')
    watcher = load_config(path, environ={}).watcher
    assert watcher.camera_pattern == "^NVR/(?P<camera>[^/]+)/"
    assert (watcher.root_camera, watcher.temp_patterns) == ("Briefkasten", ("*.uploading",))
    assert (watcher.polling, watcher.poll_interval_seconds) == (True, 5.0)
    assert load_config(None, environ={"HSID_WATCHER__POLLING": "AUTO"}).watcher.polling == "auto"
    assert load_config(None, environ={"HSID_WATCHER__POLLING": "no"}).watcher.polling is False


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(?P<camera>[^/]+", "not a regular expression"),
        ("(?P<cam>[^/]+)_", "needs a named group (?P<camera>...)"),
        ("([^/]+)_", "needs a named group (?P<camera>...)"),
    ],
)
def test_camera_pattern_is_checked_at_load(tmp_path: Path, pattern: str, message: str) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text(f"[watcher]\ncamera_pattern = '{pattern}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"watcher.camera_pattern = {pattern!r}" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "polling"),
    [("1", True), ("true", True), ("yes", True), ("false", False), ("Disabled", False),
     ("", "auto")],
)
def test_watchfiles_force_polling_is_honoured(value: str, polling: bool | str) -> None:
    # As watchfiles reads it: any value but false/disable/disabled turns polling on.
    config = load_config(None, environ={"WATCHFILES_FORCE_POLLING": value})
    assert config.watcher.polling == polling


def test_watchfiles_force_polling_beats_toml_and_loses_to_hsid_variable(tmp_path: Path) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text("[watcher]\npolling = false\n")
    assert load_config(path, environ={"WATCHFILES_FORCE_POLLING": "1"}).watcher.polling is True
    config = load_config(path, environ={"WATCHFILES_FORCE_POLLING": "1",
                                        "HSID_WATCHER__POLLING": "auto"})
    assert config.watcher.polling == "auto"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_systemd_environment_is_read() -> None:
    env = systemd_environment({"JOURNAL_STREAM": "8:123", "NOTIFY_SOCKET": "/run/n",
                               "WATCHDOG_USEC": "3000000"})
    assert (env.journal, env.notify_socket, env.watchdog_usec) == (True, "/run/n", 3_000_000)
    assert systemd_environment({}).journal is False


# --- [site] timezone -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Mars/Olympus", "America", "../etc/passwd", "UTC+2"])
def test_a_site_timezone_that_is_no_iana_name_stops_start_up(tmp_path: Path, name: str) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text(f'[site]\ntimezone = "{name}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"site.timezone = {name!r}" in str(info.value)
    assert "IANA time zone" in str(info.value)


def test_the_site_timezone_is_the_configured_one_else_the_systems() -> None:
    configured = load_config(None, environ={"HSID_SITE__TIMEZONE": "Asia/Kathmandu",
                                            "TZ": "UTC"})
    assert zone_name(site_zone(configured.site, {"TZ": "UTC"})) == "Asia/Kathmandu"
    system = SiteConfig()
    assert zone_name(site_zone(system, {"TZ": "America/Los_Angeles"})) == "America/Los_Angeles"
    assert zone_name(site_zone(system, {"TZ": ":Europe/Berlin"})) == "Europe/Berlin"
    assert zone_name(site_zone(system, {"TZ": "/usr/share/zoneinfo/Asia/Tokyo"})) == "Asia/Tokyo"
    assert site_zone(system, {}) is not None  # /etc/localtime, else UTC


def test_capture_time_keys_are_read(tmp_path: Path) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text("[watcher]\nmax_backlog_hours = 12\n[batch]\nbacklog_seconds = 600\n")
    config = load_config(path, environ={"HSID_SITE__TIMEZONE": "Europe/Berlin"})
    assert (config.watcher.max_backlog_hours, config.batch.backlog_seconds) == (12.0, 600.0)
    assert config.site.timezone == "Europe/Berlin"


def test_notification_secrets_are_redacted() -> None:
    config = load_config(None, environ={
        "HSID_ALERTS__APPRISE_URLS": '["ntfy://ntfy.sh/my-secret-topic", '
                                     '"tgram://123:bot-token/456"]',
        "HSID_MQTT__URL": "mqtt://ha:broker-pass@broker.lan:1883",
    })
    assert config.alerts.apprise_urls == ("ntfy://ntfy.sh/my-secret-topic",
                                          "tgram://123:bot-token/456")
    shown = redacted(config)
    assert shown["alerts"]["apprise_urls"] == ["ntfy://***", "tgram://***"]
    assert shown["mqtt"]["url"] == "mqtt://ha:***@broker.lan:1883"
    assert not any(secret in str(shown) for secret in ("my-secret-topic", "bot-token",
                                                        "broker-pass"))


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"HSID_API__PUBLIC_URL": "hsid.example.net"}, "api.public_url = 'hsid.example.net'"),
        ({"HSID_API__PUBLIC_URL": "https://a b"}, "api.public_url"),
        ({"HSID_MQTT__URL": "http://broker"}, "mqtt.url = 'http://broker'"),
        ({"HSID_MQTT__TOPIC_PREFIX": "hsid/#"}, "mqtt.topic_prefix = 'hsid/#'"),
        ({"HSID_MQTT__DISCOVERY_PREFIX": "/homeassistant"}, "mqtt.discovery_prefix"),
        ({"HSID_MQTT__CLEAR_SECONDS": "0"}, "mqtt.clear_seconds = 0.0"),
        ({"HSID_ALERTS__IMAGE_WIDTH": "10"}, "alerts.image_width = 10"),
        ({"HSID_ALERTS__DEFAULT_CHANNELS": "log,sms"}, "unknown channel sms"),
    ],
)
def test_bad_notification_settings_name_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert named in str(info.value)


def test_the_mqtt_alert_channel_uses_the_home_assistant_broker_unless_told_otherwise() -> None:
    shared = load_config(None, environ={"HSID_MQTT__URL": "mqtt://broker.lan"})
    assert alert_settings(shared).mqtt_url == "mqtt://broker.lan"
    own = load_config(None, environ={"HSID_MQTT__URL": "mqtt://broker.lan",
                                     "HSID_ALERTS__MQTT_URL": "mqtt://other"})
    assert alert_settings(own).mqtt_url == "mqtt://other"
    assert alert_settings(Config()).mqtt_url == ""
    assert load_config(None, environ={
        "HSID_API__PUBLIC_URL": "https://hsid.example.net/cams",
        "HSID_ALERTS__DEFAULT_CHANNELS": "log,apprise"}).alerts.default_channels == (
        "log", "apprise")


def test_entity_channel_statistics_are_read_from_toml_and_the_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hsid.toml"
    path.write_text('[entities]\nmodel = "/m/osnet.onnx"\nmean = [0.5, 0.5, 0.5]\n'
                    "vehicle_std = [0.2686, 0.2613, 0.2758]\n")
    config = load_config(path, environ={"HSID_ENTITIES__STD": "1, 1, 1"})
    assert config.entities.mean == (0.5, 0.5, 0.5)
    assert config.entities.std == (1.0, 1.0, 1.0)
    assert config.entities.vehicle_std == (0.2686, 0.2613, 0.2758)
    assert Config().entities.model == ""  # entities are off unless a model is named


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"HSID_ENTITIES__MEAN": "0.5,0.5"}, "entities.mean = [0.5, 0.5]: expected 3 numbers"),
        ({"HSID_ENTITIES__STD": "0,1,1"}, "entities.std = [0.0, 1.0, 1.0]: each must be"),
        ({"HSID_ENTITIES__VEHICLE_MEAN": "red,green,blue"}, "entities.vehicle_mean"),
        ({"HSID_ENTITIES__THRESHOLD": "1.5"}, "entities.threshold = 1.5"),
    ],
)
def test_bad_entity_settings_name_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert named in str(info.value)


def test_sections_built_in_code_are_validated_too() -> None:
    with pytest.raises(ValidationError):
        DetectorConfig(confidence=1.5)
    with pytest.raises(ValidationError):
        AnalyzerConfig(risk_medium=70)  # above risk_high
    paths = Config().with_overrides({"paths": {"camera_root": "/srv/cams"}}).paths
    assert paths == PathsConfig(camera_root=Path("/srv/cams"))
    assert isinstance(paths.camera_root, Path)


def test_toml_values_must_have_the_keys_type(tmp_path: Path) -> None:
    # Strings are parsed (the environment's are all strings); other TOML values are not.
    path = tmp_path / "hsid.toml"
    path.write_text("[api]\nport = 8000.0\n")
    with pytest.raises(ConfigError, match=r"api\.port = 8000\.0: expected an integer"):
        load_config(path, environ={})
    path.write_text("[detector]\nconfidence = true\n")
    with pytest.raises(ConfigError, match=r"detector\.confidence = True: expected a number"):
        load_config(path, environ={})


def test_every_secret_key_is_masked() -> None:
    config = load_config(None, environ={
        "HSID_DATABASE__URL": "postgresql://u:pw1@db/hsid",
        "HSID_REDIS__URL": "redis://:pw2@cache:6379/0",
        "HSID_API__API_KEYS": "pw3",
        "HSID_ALERTS__WEBHOOK_HMAC_KEY": "pw4",
        "HSID_ALERTS__MQTT_URL": "mqtt://u:pw5@broker",
        "HSID_ALERTS__APPRISE_URLS": "ntfy://pw6",
        "HSID_ALERTS__WEBHOOK_URL": "https://hooks.example.net/services/pw7",
    })
    shown = redacted(config)
    assert not any(f"pw{i}" in str(shown) for i in range(1, 8))
    assert shown["alerts"]["webhook_url"] == "https://***"
    assert shown["database"]["url"] == "postgresql://u:***@db/hsid"
    assert shown["alerts"]["webhook_hmac_key"] == "***"
    assert shown["alerts"]["apprise_urls"] == ["ntfy://***"]
