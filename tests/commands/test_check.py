"""`hsid check` on a good and a broken configuration."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from hsid.model_files.tiny_detector import write_tiny_detector


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsid", "check"], env=env, capture_output=True,
                          text=True, timeout=60)


def base_env(tmp_path: Path, database_url: str, redis_url: str) -> dict[str, str]:
    cameras, state = tmp_path / "cameras", tmp_path / "state"
    cameras.mkdir()
    (cameras / "front_door").mkdir()
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HSID_PATHS__CAMERA_ROOT": str(cameras),
        "HSID_PATHS__STATE_DIR": str(state),
        "HSID_DETECTOR__MODEL": str(write_tiny_detector(tmp_path / "tiny.onnx")),
    }


def test_check_passes_on_a_good_configuration(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    result = run_check(base_env(tmp_path, database_url, redis_url))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("config", "database", "redis", "camera_root", "watch", "time", "state_dir",
                 "models", "onnxruntime", "gpu", "alerts"):
        assert any(line.startswith("OK") and f" {name}:" in line for line in lines), name
    assert "1 camera folder" in result.stdout


def watch_line(result: subprocess.CompletedProcess[str]) -> str:
    [line] = [line for line in result.stdout.splitlines() if " watch:" in line]
    return line


def test_check_says_how_the_camera_root_is_watched(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    env = base_env(tmp_path, database_url, redis_url)
    assert watch_line(run_check(env)).startswith("OK   watch: inotify: the camera root is on")
    forced = watch_line(run_check(env | {"WATCHFILES_FORCE_POLLING": "1"}))
    assert forced == "OK   watch: polling every 1 s: watcher.polling = true"


def test_check_says_an_overlay_camera_root_is_polled(
    tmp_path: Path, database_url: str, redis_url: str, overlay_root: Path
) -> None:
    env = base_env(tmp_path, database_url, redis_url) | {
        "HSID_PATHS__CAMERA_ROOT": str(overlay_root),
        "HSID_WATCHER__POLL_INTERVAL_SECONDS": "2.5"}
    line = watch_line(run_check(env))
    assert line.startswith("OK   watch: polling every 2.5 s: the camera root is on overlayfs")


def test_check_fails_and_says_how_to_fix_each_problem(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    env = base_env(tmp_path, database_url, redis_url)
    env |= {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "HSID_PATHS__CAMERA_ROOT": str(tmp_path / "no-such-folder"),
        "HSID_DETECTOR__MODEL": str(tmp_path / "missing.onnx"),
        "HSID_DETECTOR__REQUIRE_GPU": "true",
    }
    result = run_check(env)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert {line.split(":")[0].split()[1] for line in failed} >= {
        "redis", "camera_root", "models", "onnxruntime"}
    assert result.stdout.count("fix:") == len(failed)
    assert any(line.startswith("OK") and " database:" in line
               for line in result.stdout.splitlines())


def test_check_reports_a_bad_config_value_by_name(tmp_path: Path) -> None:
    result = run_check({"PATH": "/usr/bin:/bin", "HSID_API__PORT": "eighty"})
    assert result.returncode == 2
    assert "api.port = 'eighty'" in result.stderr


async def test_check_names_alert_channels_without_a_url(
    tmp_path: Path, database_url: str, redis_url: str, db: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO alert_rules (name, channels) VALUES ('Night', $1)",
                     ["mqtt", "log"])
    await db.execute("INSERT INTO alert_rules (name, enabled, channels) VALUES ('Off', false, $1)",
                     ["webhook"])
    env = base_env(tmp_path, database_url, redis_url) | {
        "HSID_ALERTS__DEFAULT_CHANNELS": "log,webhook"}

    result = await asyncio.to_thread(run_check, env)

    assert result.returncode == 1
    [line] = [line for line in result.stdout.splitlines() if " alerts:" in line]
    assert line.startswith("FAIL")
    assert "alerts.default_channels (webhook)" in line and "rule 'Night' (mqtt)" in line
    assert "'Off'" not in line and "(log)" not in line


def test_check_shows_the_site_time_zone_and_the_local_time_there(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    env = base_env(tmp_path, database_url, redis_url) | {"TZ": "UTC"}
    house = run_check(env | {"HSID_SITE__TIMEZONE": "America/Los_Angeles"})
    [line] = [line for line in house.stdout.splitlines() if " time:" in line]
    assert line.startswith("OK   time: zone America/Los_Angeles (site.timezone), local time now")
    shown = re.search(r"now \w{3} (\S+ \S+) \(UTC([+-]\d{4})\)$", line)
    assert shown is not None, line
    local = datetime.strptime(" ".join(shown.groups()), "%Y-%m-%d %H:%M %z")
    assert local.utcoffset() == datetime.now(ZoneInfo("America/Los_Angeles")).utcoffset()
    assert abs(datetime.now(UTC) - local) < timedelta(minutes=2)
    system = run_check(env | {"TZ": "Asia/Kathmandu"})
    [line] = [line for line in system.stdout.splitlines() if " time:" in line]
    assert "zone Asia/Kathmandu (the system's; set site.timezone" in line
    assert line.endswith("(UTC+0545)")
