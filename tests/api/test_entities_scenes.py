"""Entity trust status and scene change resolution."""

from __future__ import annotations

import uuid

import asyncpg
from aiohttp.test_utils import TestClient

from tests import seed


async def test_entities_filter_and_trust(api_client: TestClient, db: asyncpg.Pool) -> None:
    person = await seed.entity(db)
    await seed.entity(db, "vehicle", "trusted")
    people = await (await api_client.get("/api/entities?entity_type=person")).json()
    assert [e["id"] for e in people["items"]] == [str(person)] and people["count"] == 1
    assert "embedding_vector" not in people["items"][0]
    trusted = await (await api_client.get("/api/entities?trust_status=trusted")).json()
    assert trusted["count"] == 1

    patched = await api_client.patch(f"/api/entities/{person}", json={"trust_status": "trusted"})
    assert (await patched.json())["trust_status"] == "trusted"
    detail = await (await api_client.get(f"/api/entities/{person}")).json()
    assert detail["entity_metadata"] == {"clothing": "red"}
    bad = await api_client.patch(f"/api/entities/{person}", json={"trust_status": "friend"})
    assert bad.status == 422
    other = await api_client.patch(f"/api/entities/{person}", json={"entity_type": "animal"})
    assert other.status == 422
    missing = await api_client.patch(f"/api/entities/{uuid.uuid4()}",
                                     json={"trust_status": "trusted"})
    assert missing.status == 404


async def test_scene_changes_list_and_resolve(api_client: TestClient, db: asyncpg.Pool) -> None:
    await seed.camera(db)
    await seed.camera(db, "garage")
    open_one = await seed.scene_change(db)
    await seed.scene_change(db, "garage", change_type="lighting", resolved=True)
    unresolved = await (await api_client.get("/api/scene-changes?unresolved=true")).json()
    assert [s["id"] for s in unresolved["items"]] == [open_one]
    resolved = await (await api_client.get("/api/scene-changes?unresolved=false")).json()
    assert resolved["count"] == 1
    garage = await (await api_client.get("/api/scene-changes?camera_id=garage")).json()
    assert garage["items"][0]["change_type"] == "lighting"

    done = await (await api_client.post(f"/api/scene-changes/{open_one}/resolve")).json()
    assert done["resolved_at"] is not None
    again = await (await api_client.post(f"/api/scene-changes/{open_one}/resolve")).json()
    assert again["resolved_at"] == done["resolved_at"]
    assert (await api_client.get(f"/api/scene-changes/{open_one}")).status == 200
    assert (await api_client.post("/api/scene-changes/999/resolve")).status == 404
    nothing_open = await (await api_client.get("/api/scene-changes?unresolved=true")).json()
    assert nothing_open["count"] == 0
