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
import onnxruntime
import pytest

from hsid.analysis.llm import gpu_offload_supported
from hsid.core.config import Config
from hsid.core.nvml import gpu_names
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.model_files.tiny_llm import write_tiny_gguf
from hsid.pipeline import detector


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
                 "models", "onnxruntime", "gpu", "llm", "alerts"):
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


def check_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    [line] = [line for line in result.stdout.splitlines() if f" {name}:" in line]
    return line


def test_check_says_which_provider_detects_and_why(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    line = check_line(run_check(base_env(tmp_path, database_url, redis_url)), "onnxruntime")
    installed = onnxruntime.get_available_providers()
    if not detector.GPU_PROVIDERS & set(installed):
        assert line == "OK   onnxruntime: CPUExecutionProvider: onnxruntime has no CUDA/TensorRT " \
                       "provider"
    elif not gpu_names():
        assert line == "OK   onnxruntime: CPUExecutionProvider: no NVIDIA GPU visible"
    elif line.startswith("OK   onnxruntime: TensorrtExecutionProvider"):
        assert f"engine cached in {tmp_path / 'state' / 'engines' / 'tiny-'}" in line
    else:
        assert line.startswith("OK   onnxruntime: CUDAExecutionProvider: ")


def test_check_names_the_tensorrt_engine_folder(tmp_path: Path) -> None:
    """The TensorRT line as a GPU machine with TensorRT would print it."""
    from hsid.commands.check import _engine_cache

    model = write_tiny_detector(tmp_path / "tiny.onnx")
    config = Config().with_overrides({"paths": {"state_dir": str(tmp_path / "state")},
                                      "detector": {"model": str(model), "batch_size": 2}})
    folder = detector.engine_dir(tmp_path / "state" / "engines", model, 2)
    assert _engine_cache(config) == (f"engine cached in {folder} (built at start-up, before "
                                     "READY (may take minutes))")
    folder.mkdir(parents=True)
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_main_0_0_sm90.engine").write_bytes(b"")
    assert _engine_cache(config) == f"engine cached in {folder} (built)"


def test_check_says_whether_the_llm_can_use_the_gpu_and_how_many_layers(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    env = base_env(tmp_path, database_url, redis_url) | {"HSID_ANALYZER__MODEL": str(model)}
    line = check_line(run_check(env), "llm")
    if gpu_offload_supported():
        assert line == ("OK   llm: llama-cpp-python can offload to the GPU; "
                        "analyzer.n_gpu_layers = -1: 2 of 2 layers of tiny.gguf on the GPU")
    elif gpu_names():
        assert line.startswith("OK   llm: the installed llama-cpp-python is a CPU-only build")
    else:
        assert line == ("OK   llm: llama-cpp-python cannot offload (no NVIDIA GPU visible): "
                        "the LLM runs on the CPU")


@pytest.mark.skipif(not gpu_names(), reason="needs an NVIDIA GPU")
def test_check_puts_detection_on_the_gpu_where_there_is_one(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    line = check_line(run_check(base_env(tmp_path, database_url, redis_url)), "onnxruntime")
    assert line.startswith(("OK   onnxruntime: TensorrtExecutionProvider",
                            "OK   onnxruntime: CUDAExecutionProvider"))
