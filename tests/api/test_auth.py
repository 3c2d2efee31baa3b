"""API keys: off by default; when on, hashed into api_keys and required everywhere but health."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient

KEYS = {"api": {"api_key_enabled": True, "api_keys": ["admin:s3cret", "bare-key"]}}


@pytest.fixture
async def keyed(make_client: MakeClient) -> TestClient:
    return await make_client(KEYS)


async def test_keys_are_off_by_default(api_client: TestClient) -> None:
    assert (await api_client.get("/api/cameras")).status == 200


async def test_requests_need_a_valid_key(keyed: TestClient) -> None:
    missing = await keyed.get("/api/cameras")
    assert missing.status == 401 and (await missing.json())["error"]["code"] == "unauthorized"
    wrong = await keyed.get("/api/cameras", headers={"X-API-Key": "guess"})
    assert wrong.status == 401
    assert (await keyed.get("/api/cameras", headers={"X-API-Key": "s3cret"})).status == 200
    assert (await keyed.get("/api/cameras", headers={"X-API-Key": "bare-key"})).status == 200
    assert (await keyed.get("/api/cameras?api_key=s3cret")).status == 401  # header only
    assert (await keyed.get("/api/nothing")).status == 401  # routes stay private too
    assert (await keyed.get("/api/openapi.json")).status == 401


async def test_health_stays_open(keyed: TestClient) -> None:
    assert (await keyed.get("/api/system/health")).status == 200


async def test_keys_are_stored_hashed_and_named(keyed: TestClient, db: asyncpg.Pool) -> None:
    await keyed.get("/api/cameras", headers={"X-API-Key": "s3cret"})
    rows = {r["name"]: r["key_hash"] for r in await db.fetch("SELECT name, key_hash "
                                                             "FROM api_keys")}
    assert rows == {"admin": hashlib.sha256(b"s3cret").hexdigest(),
                    "key-2": hashlib.sha256(b"bare-key").hexdigest()}


async def test_revoked_keys_are_refused(keyed: TestClient, db: asyncpg.Pool,
                                        make_client: MakeClient) -> None:
    assert (await keyed.get("/api/cameras", headers={"X-API-Key": "s3cret"})).status == 200
    await db.execute("UPDATE api_keys SET is_active = false WHERE name = 'admin'")
    assert (await keyed.get("/api/cameras", headers={"X-API-Key": "s3cret"})).status == 401
    restarted = await make_client(KEYS)  # a restart does not bring a revoked key back
    assert (await restarted.get("/api/cameras", headers={"X-API-Key": "s3cret"})).status == 401
    fewer = await make_client({"api": {"api_key_enabled": True, "api_keys": ["admin:s3cret"]}})
    assert (await fewer.get("/api/cameras", headers={"X-API-Key": "bare-key"})).status == 401


async def test_websocket_needs_a_key(keyed: TestClient) -> None:
    with pytest.raises(WSServerHandshakeError) as refused:
        await keyed.ws_connect("/ws/events")
    assert refused.value.status == 401
    ws = await keyed.ws_connect("/ws/events?api_key=s3cret")
    await ws.close()
    ws = await keyed.ws_connect("/ws/system", headers={"X-API-Key": "bare-key"})
    await ws.close()


async def test_actor_is_the_key_name(keyed: TestClient, db: asyncpg.Pool) -> None:
    created = await keyed.post("/api/cameras", json={"name": "Porch"},
                               headers={"X-API-Key": "s3cret"})
    assert created.status == 201
    refused = await keyed.post("/api/cameras", json={"name": "Shed"})
    assert refused.status == 401
    rows = await db.fetch("SELECT actor, status FROM audit_logs ORDER BY id")
    assert [tuple(r) for r in rows] == [("admin", "success"), ("anonymous", "failure")]
