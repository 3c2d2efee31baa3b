"""WebSocket relays: Redis pub/sub to clients, one subscription, slow clients dropped."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from hsid.api.keys import RUNTIME
from hsid.api.websocket import RELAYS, TOO_SLOW_CODE, Relay
from hsid.core.constants import SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL
from hsid.core.keyspace import Keyspace
from hsid.upkeep.status import StatusPublisher
from tests.api.conftest import MakeClient
from tests.support import eventually


@pytest.fixture
async def ws_client(make_client: MakeClient) -> TestClient:
    """The API with its relays on the run's channel names: pub/sub channels are global to
    the Redis server, and the config's redis.prefix keeps parallel runs from hearing each
    other."""
    return await make_client()


def relay_of(client: TestClient, channel: str = SECURITY_EVENTS_CHANNEL) -> Relay:
    return client.app[RELAYS][channel]


async def subscribers(redis: aioredis.Redis, channel: str) -> int:
    return dict(await redis.pubsub_numsub(channel))[channel.encode()]


async def test_published_events_reach_every_client_over_one_subscription(
    ws_client: TestClient, redis: aioredis.Redis
) -> None:
    relay = relay_of(ws_client)
    sockets = [await ws_client.ws_connect("/ws/events") for _ in range(3)]
    await eventually(lambda: subscribers(redis, relay.channel))
    assert await subscribers(redis, relay.channel) == 1
    message = {"type": "event", "data": {"id": 1, "risk_score": 75, "camera_id": "front_door"}}
    await redis.publish(relay.channel, json.dumps(message))
    for ws in sockets:
        assert json.loads((await ws.receive(timeout=5)).data) == message
        await ws.close()


async def test_system_status_is_relayed(ws_client: TestClient, redis: aioredis.Redis) -> None:
    relay = relay_of(ws_client, SYSTEM_STATUS_CHANNEL)
    ws = await ws_client.ws_connect("/ws/system")
    await eventually(lambda: subscribers(redis, relay.channel))
    await redis.publish(relay.channel, '{"type": "system_status", "data": {}}')
    assert (await ws.receive_json(timeout=5))["type"] == "system_status"
    await ws.close()


async def test_slow_client_is_dropped_while_a_fast_one_keeps_receiving(
    ws_client: TestClient, redis: aioredis.Redis
) -> None:
    relay = relay_of(ws_client)
    fast = await ws_client.ws_connect("/ws/events")
    slow = await ws_client.ws_connect("/ws/events")  # never reads until it is dropped
    await eventually(lambda: subscribers(redis, relay.channel))
    received: list[int] = []

    async def read_fast() -> None:
        async for message in fast:
            received.append(json.loads(message.data)["n"])

    reader = asyncio.create_task(read_fast())
    padding, sent = "x" * 16_384, 0
    while len(relay.clients) == 2 and sent < 20_000:
        for _ in range(10):
            await redis.publish(relay.channel, json.dumps({"n": sent, "pad": padding}))
            sent += 1
        await asyncio.sleep(0.005)
    assert len(relay.clients) == 1, "the slow client was never dropped"
    for _ in range(20):
        await redis.publish(relay.channel, json.dumps({"n": sent, "pad": ""}))
        sent += 1

    async for _message in slow:  # what was buffered, then the close frame
        pass
    assert slow.close_code == TOO_SLOW_CODE
    await eventually(lambda: len(received) == sent)
    assert received == list(range(sent))
    await fast.close()
    await reader


async def test_relay_resubscribes_after_redis_drops_it(
    ws_client: TestClient, redis: aioredis.Redis, redis_url: str
) -> None:
    relay = relay_of(ws_client)
    ws = await ws_client.ws_connect("/ws/events")
    await eventually(lambda: subscribers(redis, relay.channel))
    database = redis_url.rsplit("/", 1)[1]
    for client in await redis.client_list(_type="pubsub"):
        if client["db"] == database:
            await redis.client_kill_filter(_id=client["id"])
    await eventually(lambda: subscribers(redis, relay.channel))
    await redis.publish(relay.channel, '{"type": "event", "data": {"id": 2}}')
    assert (await ws.receive_json(timeout=5))["data"]["id"] == 2
    await ws.close()


async def test_shutdown_closes_clients(ws_client: TestClient, redis: aioredis.Redis) -> None:
    relay = relay_of(ws_client)
    ws = await ws_client.ws_connect("/ws/events")
    await eventually(lambda: subscribers(redis, relay.channel))
    closing = asyncio.create_task(ws_client.server.close())
    message = await ws.receive(timeout=5)
    assert message.type == WSMsgType.CLOSE and message.data == 1001
    await closing
    await eventually(lambda: relay._task is not None and relay._task.done())


async def test_relays_listen_on_the_channels_under_the_install_prefix(
    ws_client: TestClient, keyspace: Keyspace
) -> None:
    assert keyspace.prefix
    for channel in (SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL):
        assert relay_of(ws_client, channel).channel == keyspace.prefix + channel


async def test_two_installs_on_one_redis_never_receive_each_others_events(
    make_client: MakeClient, redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Same Redis, same database even: only the prefix keeps them apart, on both the
    publishing (StatusPublisher) and the relaying (WebSocket) side."""
    installs = []
    for name in ("a", "b"):
        client = await make_client({"redis": {"prefix": f"{redis_prefix}{name}:"}})
        runtime = client.app[RUNTIME]
        runtime.health.info["detector"] = f"install-{name}"  # tells the messages apart
        ws = await client.ws_connect("/ws/system")
        channel = relay_of(client, SYSTEM_STATUS_CHANNEL).channel
        await eventually(lambda ch=channel: subscribers(redis, ch))
        installs.append((runtime, ws))
    (runtime_a, ws_a), (runtime_b, ws_b) = installs
    assert runtime_a.keyspace.channel(SYSTEM_STATUS_CHANNEL) != runtime_b.keyspace.channel(
        SYSTEM_STATUS_CHANNEL)

    await StatusPublisher(runtime_a).publish()
    assert (await ws_a.receive_json(timeout=5))["data"]["detector"] == "install-a"
    await StatusPublisher(runtime_b).publish()
    # Pub/sub keeps order: had b heard a's message, it would have come first.
    assert (await ws_b.receive_json(timeout=5))["data"]["detector"] == "install-b"
    with pytest.raises(TimeoutError):
        await ws_a.receive(timeout=0.3)
    for _, ws in installs:
        await ws.close()
