"""Stand-ins at the edge of the outside world for alert delivery: a webhook endpoint that
records what it gets, and the local MQTT broker when there is one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


@dataclass
class Request:
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival

    @property
    def alert_id(self) -> str:
        return str(json.loads(self.body)["data"]["id"])


@dataclass
class Receiver:
    """A webhook endpoint that records each request and answers `statuses` in turn, then
    `status`; `on_request` runs before it answers."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    on_request: Callable[[Request], Awaitable[None]] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        received = Request(await request.read(), dict(request.headers), time.monotonic())
        self.requests.append(received)
        if self.on_request is not None:
            await self.on_request(received)
        await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses.pop(0) if self.statuses else self.status)

    def count(self, alert_id: uuid.UUID) -> int:
        return sum(r.alert_id == str(alert_id) for r in self.requests)


@contextlib.asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    """A Receiver listening on 127.0.0.1 at `receiver.url` while the context is open."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    receiver.url = str(server.make_url("/hook"))
    try:
        yield receiver
    finally:
        await server.close()


def broker_reachable() -> bool:
    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=1).close()
    except OSError:
        return False
    return True


needs_broker = pytest.mark.skipif(not broker_reachable(),
                                  reason=f"no MQTT broker on {MQTT_HOST}:{MQTT_PORT}")
