"""Entity API: detail with detections and thumbnails, merge, split, delete, each audited; and
trust set through the API keeping an event of that entity from alerting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from hsid.core.config import Config
from hsid.core.queues import ReliableQueue
from hsid.entities.matcher import EntityMatcher, Sighting
from tests import seed
from tests.support import eventually

T0 = datetime(2026, 11, 27, 7, 10, tzinfo=UTC)
DIMENSIONS = 8


def look(n: int, noise: float = 0.0) -> np.ndarray:
    """Person n's appearance: a unit vector along axis n (a little off it with noise)."""
    vector = np.eye(DIMENSIONS, dtype=np.float32)[n]
    vector[(n + 1) % DIMENSIONS] = noise
    return vector / np.linalg.norm(vector)


async def sighted(db: asyncpg.Pool, matcher: EntityMatcher, n: int, *, camera: str = "front_door",
                  at: datetime = T0, kind: str = "person", noise: float = 0.0,
                  thumbnail: str | None = None) -> tuple[int, uuid.UUID]:
    """A stored detection of person (or vehicle) n, recognised; (detection id, entity id)."""
    detection_id = await seed.detection(db, camera, object_type=kind, detected_at=at,
                                        thumbnail_path=thumbnail)
    [done] = await matcher.record(db, [Sighting(detection_id, camera, kind, at,
                                                look(n, noise))])
    return detection_id, done.entity_id


@pytest.fixture
async def matcher(db: asyncpg.Pool) -> EntityMatcher:
    await seed.camera(db, "front_door")
    await seed.camera(db, "garage")
    return EntityMatcher(Config().entities)


REQUEST_DETAILS = ("path", "method", "request_id", "status_code")


async def audited(db: asyncpg.Pool) -> list[tuple[str, str | None, dict]]:
    """Audit rows: action, resource and what the route added (the request's own details,
    common to every route, left out)."""
    return [(r["action"], r["resource_id"],
             {k: v for k, v in (r["details"] or {}).items() if k not in REQUEST_DETAILS})
            for r in await db.fetch(
                "SELECT action, resource_id, details FROM audit_logs ORDER BY id")]


async def test_the_detail_shows_the_entitys_detections_with_their_thumbnails(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    first, entity = await sighted(db, matcher, 0, thumbnail="/var/lib/hsid/thumbnails/a.jpg")
    second, same = await sighted(db, matcher, 0, camera="garage", noise=0.1,
                                 at=T0 + timedelta(minutes=3))
    assert same == entity

    detail = await (await api_client.get(f"/api/entities/{entity}")).json()
    assert detail["detection_count"] == 2
    assert detail["entity_metadata"]["cameras"] == ["front_door", "garage"]
    newest, oldest = detail["detections"]
    assert (newest["id"], oldest["id"]) == (second, first)
    assert oldest["thumbnail_url"] == f"/api/detections/{first}/thumbnail"
    assert newest["thumbnail_url"] is None  # no thumbnail stored (a full disk)
    assert newest["image_url"] == f"/api/detections/{second}/image"
    assert oldest["similarity"] is None and 0.9 < newest["similarity"] <= 1.0
    assert newest["camera_id"] == "garage" and newest["object_type"] == "person"
    assert "embedding_vector" not in detail

    page = await (await api_client.get(f"/api/entities/{entity}/detections?limit=1")).json()
    assert page["count"] == 2 and [d["id"] for d in page["items"]] == [second]
    missing = await api_client.get(f"/api/entities/{uuid.uuid4()}/detections")
    assert missing.status == 404


async def test_merging_folds_one_entity_into_another(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    _, kept = await sighted(db, matcher, 1)
    # The same person seen from behind an hour later: too unlike to be matched.
    _, folded = await sighted(db, matcher, 1, camera="garage", at=T0 + timedelta(hours=1),
                              noise=0.8)
    assert folded != kept
    await db.execute("UPDATE entities SET trust_status = 'trusted' WHERE id = $1", folded)

    response = await api_client.post(f"/api/entities/{kept}/merge",
                                     json={"entity_id": str(folded)})
    assert response.status == 200, await response.text()
    merged = await response.json()
    assert merged["id"] == str(kept) and merged["detection_count"] == 2
    assert merged["trust_status"] == "trusted"  # this one was unknown: it takes the other's
    assert merged["last_seen_at"] == "2026-11-27T08:10:00Z"
    assert merged["entity_metadata"]["cameras"] == ["front_door", "garage"]
    assert merged["entity_metadata"]["merged"] == [str(folded)]
    assert (await api_client.get(f"/api/entities/{folded}")).status == 404
    owners = await db.fetch("SELECT entity_id FROM entity_detections ORDER BY detection_id")
    assert {r["entity_id"] for r in owners} == {kept}
    vector = np.asarray(await db.fetchval(
        "SELECT embedding_vector FROM entities WHERE id = $1", kept))
    expected = look(1) + look(1, 0.8)
    assert vector == pytest.approx(expected / np.linalg.norm(expected), abs=1e-5)
    assert await audited(db) == [("entity_merged", str(kept),
                                  {"fields": ["entity_id"], "merged": str(folded)})]

    # The matcher, which had cached the folded entity, now finds the merged one.
    _, again = await sighted(db, matcher, 1, at=T0 + timedelta(hours=2), noise=0.4)
    assert again == kept


async def test_merge_refuses_itself_other_types_and_unknown_entities(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    _, person = await sighted(db, matcher, 1)
    _, car = await sighted(db, matcher, 1, kind="car")
    itself = await api_client.post(f"/api/entities/{person}/merge",
                                   json={"entity_id": str(person)})
    assert itself.status == 422
    other_type = await api_client.post(f"/api/entities/{person}/merge",
                                       json={"entity_id": str(car)})
    assert other_type.status == 409
    assert "different types" in (await other_type.json())["error"]["message"]
    unknown = await api_client.post(f"/api/entities/{person}/merge",
                                    json={"entity_id": str(uuid.uuid4())})
    assert unknown.status == 404
    assert await db.fetchval("SELECT count(*) FROM entities") == 2
    statuses = await db.fetch("SELECT status FROM audit_logs ORDER BY id")
    assert [r["status"] for r in statuses] == ["failure"] * 3


async def test_splitting_a_detection_off_makes_it_an_entity_of_its_own(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    times = [T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)]
    first, entity = await sighted(db, matcher, 3, at=times[0])
    middle, _ = await sighted(db, matcher, 3, camera="garage", at=times[1], noise=0.2)
    # A look-alike the matcher took for the same person, seen last.
    wrong, _ = await sighted(db, matcher, 3, at=times[2], noise=0.4)
    assert await db.fetchval("SELECT detection_count FROM entities") == 3

    response = await api_client.post(f"/api/entities/{entity}/split",
                                     json={"detection_id": wrong})
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["id"] != str(entity) and created["trust_status"] == "unknown"
    assert created["detection_count"] == 1 and created["primary_detection_id"] == wrong
    assert created["entity_metadata"]["split_from"] == str(entity)
    assert created["first_seen_at"] == created["last_seen_at"] == "2026-11-27T07:20:00Z"

    left = await (await api_client.get(f"/api/entities/{entity}")).json()
    assert left["detection_count"] == 2
    assert left["last_seen_at"] == "2026-11-27T07:15:00Z"  # moved off the split detection
    assert left["entity_metadata"]["cameras"] == ["front_door", "garage"]
    assert [d["id"] for d in left["detections"]] == [middle, first]
    vector = np.asarray(await db.fetchval(
        "SELECT embedding_vector FROM entities WHERE id = $1", entity))
    expected = look(3) + look(3, 0.2)
    assert vector == pytest.approx(expected / np.linalg.norm(expected), abs=1e-5)
    actions = await audited(db)
    assert actions == [("entity_split", str(entity),
                        {"fields": ["detection_id"], "detection_id": wrong,
                         "new_entity_id": created["id"]})]


async def test_split_refuses_a_lone_detection_and_one_of_another_entity(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    lone, entity = await sighted(db, matcher, 4)
    other, _ = await sighted(db, matcher, 5)
    only = await api_client.post(f"/api/entities/{entity}/split", json={"detection_id": lone})
    assert only.status == 409
    foreign = await api_client.post(f"/api/entities/{entity}/split",
                                    json={"detection_id": other})
    assert foreign.status == 404
    bad = await api_client.post(f"/api/entities/{entity}/split", json={"detection_id": "x"})
    assert bad.status == 422


async def test_deleting_an_entity_keeps_its_detections(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
) -> None:
    detection, entity = await sighted(db, matcher, 6)
    deleted = await api_client.delete(f"/api/entities/{entity}")
    assert deleted.status == 204
    assert (await api_client.get(f"/api/entities/{entity}")).status == 404
    assert (await api_client.delete(f"/api/entities/{entity}")).status == 404
    assert await db.fetchval("SELECT count(*) FROM entity_detections") == 0
    assert await db.fetchval("SELECT count(*) FROM detections WHERE id = $1", detection) == 1
    assert [a[:2] for a in await audited(db)] == [("entity_deleted", str(entity)),
                                                  ("entity_deleted", str(entity))]


# --- trust and alerts --------------------------------------------------------------------


async def test_trust_set_through_the_api_keeps_that_persons_events_from_alerting(
    api_client: TestClient, db: asyncpg.Pool, matcher: EntityMatcher,
    analysis: ReliableQueue,
) -> None:
    created = await api_client.post("/api/alert-rules", json={
        "name": "anyone at the door", "object_types": ["person"], "cooldown_seconds": 0})
    assert (await created.json())["skip_trusted_entities"] is True
    now = datetime.now(UTC)
    _, neighbour = await sighted(db, matcher, 7, at=now - timedelta(minutes=10))
    trusted = await api_client.patch(f"/api/entities/{neighbour}",
                                     json={"trust_status": "trusted"})
    assert (await trusted.json())["trust_status"] == "trusted"

    visit, same = await sighted(db, matcher, 7, at=now, noise=0.05)
    assert same == neighbour
    with capture_logs() as logs:
        await analysis.push({"batch_id": "neighbour", "camera_id": "front_door",
                             "detection_ids": [visit]})
        event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0
    assert any(e["event"] == "alert_rule_skipped_trusted" for e in logs)
    assert "trusted entity" in event["reasoning"]

    stranger, _ = await sighted(db, matcher, 0, at=now)
    await analysis.push({"batch_id": "stranger", "camera_id": "front_door",
                         "detection_ids": [stranger]})
    alert = await eventually(lambda: db.fetchrow("SELECT * FROM alerts"))
    assert alert["event_id"] == await db.fetchval(
        "SELECT id FROM events WHERE batch_id = 'stranger'")
