"""API fixtures: the real app on a real TCP port over the test run's database and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from hsid.api.server import build_app
from hsid.core.config import Config
from hsid.core.runtime import Runtime

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client(
    db: asyncpg.Pool, redis: aioredis.Redis, config: Config
) -> AsyncIterator[MakeClient]:
    """Start an app with config overrides ({section: {key: value}}); all closed afterwards."""
    clients: list[TestClient] = []

    async def make(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> TestClient:
        runtime = Runtime(config=config.with_overrides(overrides or {}),
                          stages=frozenset({"api"}), pool=db, redis=redis)
        client = TestClient(TestServer(build_app(runtime)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def api_client(make_client: MakeClient) -> TestClient:
    """The API with the default configuration (API keys off)."""
    return await make_client()
