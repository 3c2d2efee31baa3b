"""The daemon as a subprocess: health, sd_notify, SIGTERM, and waiting for absent stores."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support import Daemon, http_json, wait_for

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/none"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> set[str]:
    messages: set[str] = set()
    while True:
        try:
            messages.update(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            return messages


def daemon_env(fresh_database_url: str, redis_url: str, redis_prefix: str, camera_root: Path,
               state_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": fresh_database_url,
        "REDIS_URL": redis_url,
        "HSID_REDIS__PREFIX": redis_prefix,
        "HSID_PATHS__CAMERA_ROOT": str(camera_root),
        "HSID_PATHS__STATE_DIR": str(state_dir),
        "HSID_API__PORT": str(port),
        **extra,
    }


def test_daemon_notifies_systemd_serves_health_and_stops_on_sigterm(
    tmp_path: Path, fresh_database_url: str, redis_url: str, redis_prefix: str,
    camera_root: Path, state_dir: Path, notify_socket: socket.socket,
) -> None:
    port = free_port()
    env = daemon_env(fresh_database_url, redis_url, redis_prefix, camera_root, state_dir, port,
                     NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC="400000")
    daemon = Daemon(env, ["run", "--stages", "api"], tmp_path / "daemon.log")
    try:
        _, body = wait_for(
            lambda: (r := http_json(f"http://127.0.0.1:{port}/api/system/health"))[0] == 200
            and r, timeout=20)
        assert body["database"]["status"] == "up"
        assert body["redis"]["status"] == "up"
        messages = wait_for(lambda: (m := received(notify_socket)) >= {"READY=1", "WATCHDOG=1"}
                            and m, timeout=5)
        assert "READY=1" in messages
    finally:
        rc = daemon.stop(timeout=10)
    assert rc == 0, daemon.output()
    assert "STOPPING=1" in received(notify_socket)


@pytest.mark.parametrize(
    ("down", "override"),
    [("redis", {"REDIS_URL": UNREACHABLE_REDIS}),
     ("database", {"DATABASE_URL": UNREACHABLE_DATABASE})],
)
def test_daemon_keeps_retrying_and_health_names_the_store_that_is_down(
    tmp_path: Path, fresh_database_url: str, redis_url: str, redis_prefix: str,
    camera_root: Path, state_dir: Path, down: str, override: dict[str, str],
) -> None:
    port = free_port()
    env = {**daemon_env(fresh_database_url, redis_url, redis_prefix, camera_root, state_dir,
                        port), **override}
    daemon = Daemon(env, ["run", "--stages", "api"], tmp_path / "daemon.log")
    try:
        up = "database" if down == "redis" else "redis"
        status, body = wait_for(
            lambda: (r := http_json(f"http://127.0.0.1:{port}/api/system/health"))[0]
            and r[1][up]["status"] == "up" and r,
            timeout=20)
        assert status == 503
        assert body[down]["status"] == "down"
        wait_for(lambda: daemon.output().count("store_unavailable") >= 2, timeout=10)
        assert daemon.process.poll() is None
    finally:
        rc = daemon.stop(timeout=10)
    assert rc == 0, daemon.output()


def test_under_journal_lines_carry_syslog_priority_and_no_timestamp(
    tmp_path: Path, fresh_database_url: str, redis_url: str, redis_prefix: str,
    camera_root: Path, state_dir: Path,
) -> None:
    port = free_port()
    env = daemon_env(fresh_database_url, UNREACHABLE_REDIS, redis_prefix, camera_root,
                     state_dir, port, JOURNAL_STREAM="8:12345")
    daemon = Daemon(env, ["run", "--stages", "api"], tmp_path / "daemon.log")
    try:
        wait_for(lambda: "store_unavailable" in daemon.output(), timeout=20)
    finally:
        assert daemon.stop(timeout=10) == 0
    lines = [line for line in daemon.output().splitlines() if line.strip()]
    assert all(re.match(r"<[0-7]>\S+: \S+", line) for line in lines), lines
    assert any(line.startswith("<4>hsid.core.backoff: store_unavailable") for line in lines)
    assert any(line.startswith("<6>hsid.daemon.app: hsid_starting") for line in lines)
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines)


def test_invalid_config_stops_start_up_with_one_named_error(tmp_path: Path) -> None:
    daemon = Daemon({"HSID_DETECTOR__CONFIDENCE": "lots"}, ["run"], tmp_path / "daemon.log")
    assert daemon.process.wait(10) == 2
    daemon.stop()
    assert "detector.confidence = 'lots'" in daemon.output()
