"""Configuration: defaults, TOML, environment overrides, and the named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsid.config import Config, load_config, redacted, systemd_environment
from hsid.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_systemd_environment_is_read() -> None:
    env = systemd_environment({"JOURNAL_STREAM": "8:123", "NOTIFY_SOCKET": "/run/n",
                               "WATCHDOG_USEC": "3000000"})
    assert (env.journal, env.notify_socket, env.watchdog_usec) == (True, "/run/n", 3_000_000)
    assert systemd_environment({}).journal is False
