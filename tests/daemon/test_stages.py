"""The detect stage's model load: warmed up at the largest batch before the stage exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.core.config import Config
from hsid.core.runtime import Runtime
from hsid.daemon import stages
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline.detector import Detector


async def test_detector_is_warmed_up_and_ready_is_logged_before_the_stage_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config().with_overrides({
        "paths": {"state_dir": str(tmp_path / "state"), "camera_root": str(tmp_path)},
        "detector": {"model": str(write_tiny_detector(tmp_path / "tiny.onnx")),
                     "batch_size": 3}})
    warmed: list[int] = []
    real_warm_up = Detector.warm_up

    def warm_up(self: Detector) -> None:
        warmed.append(self.max_batch)
        real_warm_up(self)

    monkeypatch.setattr(Detector, "warm_up", warm_up)
    redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: not needed
    runtime = Runtime(config=config, stages=frozenset({"detect"}), pool=object(),  # type: ignore[arg-type]
                      redis=redis)
    with capture_logs() as logs:
        built = await stages._detect(runtime)
    assert warmed == [3]
    assert [name for name, _ in built] == ["detector", "batch_sweeper"]
    events = [entry["event"] for entry in logs]
    assert events.index("detector_loaded") < events.index("detector_ready")
    [ready] = [entry for entry in logs if entry["event"] == "detector_ready"]
    assert ready["provider"] == runtime.health.info["detector"]["provider"]
    assert ready["batch"] == 3
    assert isinstance(ready["seconds"], float) and ready["seconds"] >= 0
    await redis.aclose()
