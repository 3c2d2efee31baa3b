"""WebSocket relays: one Redis subscription per channel, fanned out to small per-client queues."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref

import redis.asyncio as aioredis
import structlog
from aiohttp import WSCloseCode, web

from hsid.api.routing import ApiRoutes, Call
from hsid.core.backoff import Backoff
from hsid.core.constants import SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL
from hsid.core.errors import Unavailable
from hsid.core.runtime import Runtime, pause

log = structlog.get_logger(__name__)

# A client may fall this many messages behind; events are rare, so a full queue means a
# stuck client, which is closed rather than allowed to hold memory or slow the others.
CLIENT_QUEUE_SIZE = 64
TOO_SLOW_CODE = WSCloseCode.TRY_AGAIN_LATER  # 1013
# Pings keep idle connections alive through NAT and proxies and find dead peers.
HEARTBEAT_SECONDS = 20.0
# A client that does not take even the close frame is cut off after this long.
CLOSE_TIMEOUT_SECONDS = 2.0
INBOUND_MAX_BYTES = 4096  # clients only listen; anything they send is read and dropped
POLL_SECONDS = 1.0  # how soon the subscription notices a stop request
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
REDIS_ERRORS = (OSError, aioredis.RedisError, Unavailable)


class Client:
    """One connection: its bounded queue and the task that writes the queue to the socket."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request, self.ws = request, ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE_SIZE)
        self.sender: asyncio.Task[None] | None = None

    async def send_queued(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await self.ws.send_str(await self.queue.get())

    async def close(self, code: int, message: bytes) -> None:
        """Close within CLOSE_TIMEOUT_SECONDS, or cut the connection: a client that stopped
        reading never takes the close frame either."""
        if self.sender is not None:
            self.sender.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message),
                                   CLOSE_TIMEOUT_SECONDS)
        except (TimeoutError, ConnectionError):
            if self.request.transport is not None:
                self.request.transport.abort()


class Relay:
    """Relays every message published on one Redis channel (its full name, prefix and all)
    to every connected client.

    The subscription starts with the first client and then lives with the app; when Redis
    drops it, it reconnects with backoff. Fan-out never awaits a client: a full queue gets
    its client closed with 1013, so one slow client never delays the others.
    """

    def __init__(self, runtime: Runtime, channel: str) -> None:
        self.runtime, self.channel = runtime, channel
        self.clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def join(self, client: Client) -> None:
        self.clients.add(client)
        if self._task is None and not self._stopping.is_set():
            # A fresh context: the relay outlives the request that happened to start it.
            self._task = asyncio.create_task(self._run(), name=f"relay:{self.channel}",
                                             context=contextvars.Context())

    def fan_out(self, text: str) -> None:
        for client in list(self.clients):
            try:
                client.queue.put_nowait(text)
            except asyncio.QueueFull:
                self.clients.discard(client)
                log.warning("ws_client_too_slow", channel=self.channel,
                            remote=client.request.remote)
                task = asyncio.create_task(client.close(TOO_SLOW_CODE, b"too slow"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def _run(self) -> None:
        backoff = Backoff(RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS)
        while not self._stopping.is_set():
            try:
                await self._listen(backoff)
            except REDIS_ERRORS as err:
                delay = backoff.next_delay()
                log.warning("ws_relay_reconnecting", channel=self.channel, in_s=delay,
                            error=str(err) or type(err).__name__)
                await pause(self._stopping, delay)

    async def _listen(self, backoff: Backoff) -> None:
        # Polled with a timeout and a stop flag rather than `async for pubsub.listen()`:
        # redis-py can swallow a cancellation that lands inside subscribe(), which would
        # leave a blocked listen() running forever after shutdown.
        pubsub = self.runtime.require_redis().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            log.info("ws_relay_subscribed", channel=self.channel)
            backoff.reset()
            while not self._stopping.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=POLL_SECONDS)
                if message is not None:
                    data = message["data"]
                    self.fan_out(data.decode("utf-8", "replace") if isinstance(data, bytes)
                                 else str(data))
                    await asyncio.sleep(0)  # let the senders run between messages of a burst
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()

    async def close(self) -> None:
        """Close every client (1001, going away) and stop the subscription."""
        self._stopping.set()
        await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, b"server shutdown")
                               for c in list(self.clients)))
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=POLL_SECONDS + CLOSE_TIMEOUT_SECONDS)


RELAYS = web.AppKey("ws_relays", dict)

api = ApiRoutes("websocket")


async def _relay(call: Call, channel: str) -> web.WebSocketResponse:
    request = call.request
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=INBOUND_MAX_BYTES)
    await ws.prepare(request)
    client = Client(request, ws)
    client.sender = asyncio.create_task(client.send_queued())
    relay: Relay = request.app[RELAYS][channel]
    relay.join(client)
    try:
        async for _message in ws:  # reading is what answers pings and notices the close
            pass
    finally:
        relay.clients.discard(client)
        client.sender.cancel()
    return ws


@api.get("/ws/events", "WebSocket: every security event as it is published", websocket=True)
async def ws_events(call: Call) -> web.WebSocketResponse:
    return await _relay(call, SECURITY_EVENTS_CHANNEL)


@api.get("/ws/system", "WebSocket: periodic system status", websocket=True)
async def ws_system(call: Call) -> web.WebSocketResponse:
    return await _relay(call, SYSTEM_STATUS_CHANNEL)


def relays(runtime: Runtime) -> dict[str, Relay]:
    """The app's relays by logical channel name, each subscribed to the channel under this
    install's prefix; their subscriptions start with their first client."""
    return {channel: Relay(runtime, runtime.keyspace.channel(channel))
            for channel in (SECURITY_EVENTS_CHANNEL, SYSTEM_STATUS_CHANNEL)}


async def close_relays(app: web.Application) -> None:
    """on_shutdown: WebSocket handlers never end by themselves, so close them first."""
    await asyncio.gather(*(relay.close() for relay in app[RELAYS].values()))
