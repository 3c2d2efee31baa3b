"""Property-based check of the whole API against its own OpenAPI document (schemathesis).

The app runs on a real TCP port in a thread of its own (schemathesis calls it with
`requests`, synchronously), over the test run's database and Redis with seeded rows.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.schemas import APIOperation

from hsid.api.server import build_app
from hsid.core.config import Config, load_config
from hsid.core.db import create_pool
from hsid.core.runtime import Runtime
from tests import seed
from tests.conftest import TABLES, free_port

JPEG = b"\xff\xd8\xff\xe0seeded\xff\xd9"
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


async def seed_everything(runtime: Runtime) -> None:
    """A little of everything, so that lists, details and files have something to show."""
    pool, paths = runtime.require_pool(), runtime.config.paths
    folder = paths.camera_root / "front_door"
    folder.mkdir()
    (folder / "snap.jpg").write_bytes(JPEG)
    (paths.state_dir / "thumb.jpg").write_bytes(JPEG)
    await seed.camera(pool, folder=str(folder))
    detections = [await seed.detection(pool, file_path=str(folder / "snap.jpg"),
                                       thumbnail_path=str(paths.state_dir / "thumb.jpg"))
                  for _ in range(3)]
    event_id = await seed.event(pool, detection_ids=detections)
    await seed.alert(pool, event_id, await seed.alert_rule(pool))
    await seed.entity(pool)
    await seed.scene_change(pool)
    await pool.execute("INSERT INTO zones (id, camera_id, name, coordinates) "
                       "VALUES ('porch', 'front_door', 'Porch', '[[0,0],[1,1]]')")
    await pool.execute("INSERT INTO user_calibrations (camera_id, calibration_type, "
                       "calibration_data) VALUES ('front_door', 'height', '{\"m\": 2}')")
    await pool.execute("INSERT INTO prompt_configs (model, system_prompt) "
                       "VALUES ('nemotron', 'Be careful.')")
    await pool.execute("INSERT INTO prompt_versions (model, version, config_json, is_active) "
                       "VALUES ('nemotron', 1, $1, true)", json.dumps(
                           {"system_prompt": "Be careful.", "temperature": 0.7,
                            "max_tokens": 2048}))
    await runtime.require_redis().rpush(runtime.keyspace.dlq("detection_queue"), json.dumps({
        "original_job": {"camera_id": "front_door", "file_path": "/x.jpg",
                         "timestamp": "2026-01-01T00:00:00.000000"},
        "error": "boom", "attempt_count": 3, "first_failed_at": "2026-01-01T00:00:00.000000",
        "last_failed_at": "2026-01-01T00:00:01.000000", "queue_name": "detection_queue"}))


class LiveServer:
    """The app on 127.0.0.1:<port>, served by an event loop in a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.runtime: Runtime | None = None

    def run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)  # type: ignore[arg-type]

    async def _start(self) -> None:
        pool = await create_pool(self.config.database)
        client = aioredis.Redis.from_url(self.config.redis.url)
        self.runtime = Runtime(config=self.config, stages=frozenset({"api"}), pool=pool,
                               redis=client)
        await seed_everything(self.runtime)
        self.runner = web.AppRunner(build_app(self.runtime))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.config.api.port).start()

    async def _stop(self) -> None:
        assert self.runner is not None and self.runtime is not None
        await self.runner.cleanup()
        pool, client = self.runtime.require_pool(), self.runtime.require_redis()
        await pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        await client.flushdb()
        await pool.close()
        await client.aclose()

    def __enter__(self) -> str:
        self.thread.start()
        self.run(self._start())
        return f"http://127.0.0.1:{self.config.api.port}"

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live_api(database_url: str, redis_url: str, redis_prefix: str,
             tmp_path: Path) -> Iterator[str]:
    """The base URL of a live, seeded API."""
    for folder in ("cameras", "state"):
        (tmp_path / folder).mkdir()
    config = load_config(None, {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "HSID_REDIS__PREFIX": redis_prefix,
        "HSID_PATHS__CAMERA_ROOT": str(tmp_path / "cameras"),
        "HSID_PATHS__STATE_DIR": str(tmp_path / "state"),
        "HSID_API__PORT": str(free_port()),
    })
    with LiveServer(config) as base_url:
        yield base_url


def check_operation(operation: APIOperation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    run()


def test_api_never_fails_and_matches_its_document(live_api: str) -> None:
    """Every operation, with valid and invalid input: no 5xx, and every response (status,
    content type, body) is what the document says. schemathesis' own pytest plugin does not
    run under pytest 9, so the operations are driven through its Python API."""
    schema = schemathesis.openapi.from_url(f"{live_api}/api/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                check_operation(operation, mode)
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE
            except (Exception, FailureGroup) as err:  # collected: one run reports them all
                details = "\n".join(str(e) for e in getattr(err, "exceptions", [err]))
                failures.append(f"{operation.label} [{mode.value}]:\n{details}")
    assert not failures, "\n\n".join(failures)
