"""Entities: crops recognised as the same person or vehicle across snapshots and cameras, the
window, processes matching at once, and what the analyzer, the rules and alert rules hear."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from hsid.alerts.rules import DetectionFacts, EventFacts, match_rule
from hsid.analysis.fallback import TRUSTED_FACTOR, UNTRUSTED_BONUS, fallback_assessment
from hsid.core.config import Config, EntitiesConfig
from hsid.entities.context import KnownEntity, entity_facts
from hsid.entities.edits import delete_entity
from hsid.entities.matcher import EntityMatcher, Sighting
from hsid.model_files.tiny_embedder import write_tiny_embedder
from hsid.pipeline.detector import DecodedImage, ObjectDetection, decode
from hsid.pipeline.recognizer import Candidate, EntityRecognizer, load_embedders
from tests import seed
from tests.entities.entity_process import DIMENSIONS
from tests.pipeline.samples import NIGHT, batch, person

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 27, 7, 10, tzinfo=UTC)
RED, BLUE, WHITE = (0, 0, 255), (255, 0, 0), (255, 255, 255)  # BGR


def snapshot_with(*patches: tuple[tuple[int, int, int, int], tuple[int, int, int]]
                  ) -> DecodedImage:
    """A decoded 1280x720 JPEG, grey with solid patches (x0, y0, x1, y1) in BGR colours."""
    pixels = np.full((720, 1280, 3), 128, np.uint8)
    for (x0, y0, x1, y1), colour in patches:
        pixels[y0:y1, x0:x1] = colour
    return decode(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
                  10**8)


def box(x0: int, y0: int, x1: int, y1: int, kind: str = "person") -> ObjectDetection:
    return ObjectDetection(kind, 0.95, x0, y0, x1 - x0, y1 - y0)


@pytest.fixture
def entities_config(tmp_path: Path) -> EntitiesConfig:
    model = write_tiny_embedder(tmp_path / "tiny-embedder.onnx")
    return Config().with_overrides({"entities": {"model": str(model)}}).entities


@pytest.fixture
async def recognizer(entities_config: EntitiesConfig, db: asyncpg.Pool) -> EntityRecognizer:
    embedders = await asyncio.to_thread(load_embedders, entities_config, 1)
    return EntityRecognizer(entities_config, db, embedders)


@pytest.fixture
async def cameras(db: asyncpg.Pool) -> tuple[str, str]:
    return await seed.camera(db, "front_door"), await seed.camera(db, "garage")


async def candidate(db: asyncpg.Pool, camera: str, image: DecodedImage, found: ObjectDetection,
                    at: datetime = T0, snapshot: str | None = None) -> Candidate:
    """A stored detection of `found` in `image`, ready for recognition."""
    detection_id = await seed.detection(db, camera, object_type=found.object_type,
                                        detected_at=at)
    return Candidate(detection_id, camera, at, found, image, snapshot or f"{camera}-{at}")


async def entities(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM entities ORDER BY first_seen_at, id")


# --- recognition ---------------------------------------------------------------------------


async def test_the_same_crop_on_two_cameras_is_one_entity_seen_on_both(
    recognizer: EntityRecognizer, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, garage = cameras
    red_person = await candidate(db, front, snapshot_with(((100, 100, 200, 400), RED)),
                                 box(100, 100, 200, 400))
    # The same red figure, elsewhere in another camera's picture, a minute later.
    again = await candidate(db, garage, snapshot_with(((700, 200, 800, 500), RED)),
                            box(700, 200, 800, 500), at=T0 + timedelta(minutes=1))
    assert await recognizer.recognise([red_person]) == 1
    assert await recognizer.recognise([again]) == 1

    [entity] = await entities(db)
    assert entity["entity_type"] == "person" and entity["trust_status"] == "unknown"
    assert entity["detection_count"] == 2
    assert (entity["first_seen_at"], entity["last_seen_at"]) == (T0, T0 + timedelta(minutes=1))
    assert entity["primary_detection_id"] == red_person.detection_id
    assert entity["entity_metadata"] == {"cameras": [front, garage], "classes": ["person"],
                                         "colours": ["red"]}
    vector = np.asarray(entity["embedding_vector"])
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    links = await db.fetch("SELECT * FROM entity_detections ORDER BY detection_id")
    assert [link["detection_id"] for link in links] == [red_person.detection_id,
                                                        again.detection_id]
    assert links[0]["similarity"] is None  # it began the entity
    assert links[1]["similarity"] >= recognizer._matcher.threshold("person")


async def test_different_people_are_different_entities(
    recognizer: EntityRecognizer, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, _ = cameras
    image = snapshot_with(((100, 100, 200, 400), RED), ((600, 100, 700, 400), BLUE))
    found = [await candidate(db, front, image, box(100, 100, 200, 400)),
             await candidate(db, front, image, box(600, 100, 700, 400))]
    later = snapshot_with(((300, 300, 400, 600), BLUE))
    found.append(await candidate(db, front, later, box(300, 300, 400, 600),
                                 at=T0 + timedelta(seconds=30)))
    assert await recognizer.recognise(found) == 3

    counts = {tuple(row["entity_metadata"]["colours"]): row["detection_count"]
              for row in await entities(db)}
    assert counts == {("red",): 1, ("blue",): 2}


async def test_vehicles_are_matched_among_vehicles_only(
    recognizer: EntityRecognizer, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, garage = cameras
    car = await candidate(db, front, snapshot_with(((100, 100, 500, 300), WHITE)),
                          box(100, 100, 500, 300, "car"))
    # A white truck on the other camera (the same van, classed differently), and a person
    # in white, who is no vehicle whatever their colour.
    truck = await candidate(db, garage, snapshot_with(((300, 300, 700, 500), WHITE)),
                            box(300, 300, 700, 500, "truck"), at=T0 + timedelta(minutes=2))
    walker = await candidate(db, garage, snapshot_with(((900, 100, 1000, 400), WHITE)),
                             box(900, 100, 1000, 400), at=T0 + timedelta(minutes=3))
    dog = await candidate(db, garage, snapshot_with(((100, 500, 200, 600), WHITE)),
                          box(100, 500, 200, 600, "dog"), at=T0 + timedelta(minutes=3))
    assert await recognizer.recognise([car, truck, walker, dog]) == 3  # dogs are no entities

    rows = {row["entity_type"]: row for row in await entities(db)}
    assert rows["vehicle"]["detection_count"] == 2
    assert rows["vehicle"]["entity_metadata"]["classes"] == ["car", "truck"]
    assert rows["person"]["detection_count"] == 1


async def test_an_entity_not_seen_within_the_window_is_not_matched(
    entities_config: EntitiesConfig, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    config = Config(entities=entities_config).with_overrides(
        {"entities": {"window_hours": 1}}).entities
    matcher = EntityMatcher(config)
    front, _ = cameras
    vector = np.eye(DIMENSIONS, dtype=np.float32)[0]
    at = [T0, T0 + timedelta(minutes=50), T0 + timedelta(minutes=170)]
    ids = [await seed.detection(db, front, detected_at=moment) for moment in at]

    first = await matcher.record(db, [Sighting(ids[0], front, "person", at[0], vector)])
    within = await matcher.record(db, [Sighting(ids[1], front, "person", at[1], vector)])
    # Two hours after it was last seen, the same look is somebody new.
    expired = await matcher.record(db, [Sighting(ids[2], front, "person", at[2], vector)])

    assert first[0].created and not within[0].created
    assert within[0].entity_id == first[0].entity_id
    assert expired[0].created and expired[0].entity_id != first[0].entity_id
    assert [row["detection_count"] for row in await entities(db)] == [2, 1]


async def test_a_detection_is_recognised_once(
    entities_config: EntitiesConfig, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    matcher = EntityMatcher(entities_config)
    front, _ = cameras
    detection_id = await seed.detection(db, front, detected_at=T0)
    sighting = Sighting(detection_id, front, "person", T0, np.eye(DIMENSIONS,
                                                                   dtype=np.float32)[3])
    assert len(await matcher.record(db, [sighting])) == 1
    assert await EntityMatcher(entities_config).record(db, [sighting]) == []  # a retried job
    assert [row["detection_count"] for row in await entities(db)] == [1]


async def test_two_people_in_one_snapshot_are_never_one_entity(
    entities_config: EntitiesConfig, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    matcher = EntityMatcher(entities_config)
    front, _ = cameras
    twins = [await seed.detection(db, front, detected_at=T0) for _ in range(2)]
    vector = np.eye(DIMENSIONS, dtype=np.float32)[5]
    done = await matcher.record(db, [Sighting(i, front, "person", T0, vector, snapshot="a.jpg")
                                     for i in twins])
    assert len({r.entity_id for r in done}) == 2


async def test_two_processes_matching_at_once_create_no_duplicates(
    database_url: str, db: asyncpg.Pool, cameras: tuple[str, str], tmp_path: Path,
) -> None:
    """Each round, both processes see person r at the same moment: one must create them,
    the other find them. Without the lock, both would create."""
    front, _ = cameras
    rounds = 30
    ids = [await seed.detection(db, front) for _ in range(2 * rounds)]
    go = tmp_path / "go"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.entities.entity_process", database_url, str(go),
            str(rounds), str(first), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE)
        for first in (ids[0], ids[rounds])
    ]
    await asyncio.sleep(1.0)  # both imported and connected, waiting for the signal
    go.touch()
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 120)
    assert [p.returncode for p in processes] == [0, 0]
    # The last line is the count; hsid's log lines come before it.
    assert [int(out.decode().splitlines()[-1]) for out, _ in outputs] == [rounds, rounds]

    rows = await entities(db)
    assert len(rows) == rounds
    assert all(row["detection_count"] == 2 for row in rows)
    assert await db.fetchval("SELECT count(*) FROM entity_detections") == 2 * rounds


async def test_the_cache_follows_entities_deleted_elsewhere(
    entities_config: EntitiesConfig, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    matcher = EntityMatcher(entities_config)
    front, _ = cameras
    vector = np.eye(DIMENSIONS, dtype=np.float32)[7]
    first, second = [await seed.detection(db, front, detected_at=T0) for _ in range(2)]
    [made] = await matcher.record(db, [Sighting(first, front, "person", T0, vector)])
    await delete_entity(db, made.entity_id)  # through the API, by another process
    [again] = await matcher.record(db, [Sighting(second, front, "person", T0, vector)])
    assert again.created and again.entity_id != made.entity_id


async def test_a_failing_recognition_is_logged_and_costs_nothing_else(
    recognizer: EntityRecognizer, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, _ = cameras
    image = snapshot_with(((100, 100, 200, 400), RED))
    gone = Candidate(999_999, front, T0, box(100, 100, 200, 400), image, "x")  # no such row
    with capture_logs() as logs:
        assert await recognizer.recognise([gone]) == 0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["entities_failed"]
    assert await entities(db) == []
    # The cache dropped what the failed transaction taught it: the next one works.
    fine = await candidate(db, front, image, box(100, 100, 200, 400))
    assert await recognizer.recognise([fine]) == 1


# --- what the analyzer hears --------------------------------------------------------------


async def _link(db: asyncpg.Pool, entity_id: object, detection_id: int) -> None:
    await db.execute("INSERT INTO entity_detections (detection_id, entity_id, embedding) "
                     "VALUES ($1, $2, $3)", detection_id, entity_id, [1.0, 0.0])
    await db.execute("UPDATE entities SET detection_count = detection_count + 1 "
                     "WHERE id = $1", entity_id)


async def test_the_prompt_hears_how_often_an_entity_was_seen_today_and_where(
    db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, garage = cameras
    berlin = ZoneInfo("Europe/Berlin")
    morning = datetime(2026, 11, 27, 7, 10, tzinfo=berlin)
    regular = await seed.entity(db, "person", "trusted")
    newcomer = await seed.entity(db, "vehicle")
    await db.execute("UPDATE entities SET detection_count = 0, first_seen_at = $1", morning)
    await db.execute("UPDATE entities SET first_seen_at = $1 WHERE id = $2",
                     morning - timedelta(days=1), regular)
    sightings = [(front, morning), (garage, morning + timedelta(hours=2)),
                 (front, morning + timedelta(hours=5))]
    ids = []
    for camera, at in sightings:
        ids.append(await seed.detection(db, camera, detected_at=at))
        await _link(db, regular, ids[-1])
    car = await seed.detection(db, front, object_type="car", detected_at=sightings[-1][1])
    await _link(db, newcomer, car)
    yesterday = await seed.detection(db, garage, detected_at=morning - timedelta(days=1))
    await _link(db, regular, yesterday)

    facts = await entity_facts(db, Config().entities, [ids[-1], car], sightings[-1][1], berlin)

    person_line, vehicle_line = facts.lines
    assert person_line == ("Person 1 (trusted: the household marked it as known and safe): "
                           "seen 3 times today on 2 cameras (Front Door, Garage), "
                           "first at 07:10. Known since 26 Nov 07:10.")
    assert vehicle_line.startswith("Vehicle 1 (unknown, not marked): not seen before")
    assert facts.of(ids[-1]).trust_status == "trusted"
    assert facts.of(car).new and not facts.of(ids[-1]).new


async def test_the_analyzer_waits_a_little_for_the_entities_of_fresh_detections(
    entities_config: EntitiesConfig, db: asyncpg.Pool, cameras: tuple[str, str],
) -> None:
    front, _ = cameras
    config = Config(entities=entities_config).with_overrides(
        {"entities": {"wait_seconds": 5}}).entities
    now = datetime.now(UTC)
    fresh = await seed.detection(db, front, detected_at=now)
    entity = await seed.entity(db)

    async def recognised_later() -> None:
        await asyncio.sleep(0.3)
        await _link(db, entity, fresh)

    linking = asyncio.create_task(recognised_later())
    facts = await entity_facts(db, config, [fresh], now, UTC)
    await linking
    assert facts.of(fresh) is not None

    # One never recognised (the embedder failed) holds the analysis back no longer than
    # wait_seconds after it was stored, and an old one not at all.
    stale = await seed.detection(db, front, detected_at=now - timedelta(seconds=4.5))
    started = asyncio.get_running_loop().time()
    assert (await entity_facts(db, config, [stale], now, UTC)).entities == []
    assert asyncio.get_running_loop().time() - started < 2.0


def _known(trust: str, cameras: tuple[str, ...] = ("Front Door",),
           kind: str = "person") -> KnownEntity:
    return KnownEntity("e", kind, trust, (1,), T0, 3, 3, cameras, T0)


def test_the_rules_raise_the_risk_of_an_untrusted_entity_and_lower_a_trusted_one() -> None:
    analyzer = Config().analyzer
    plain = fallback_assessment(batch(person()), "test", analyzer).risk_score
    untrusted = batch(person(), extra=["..."])
    untrusted.entities.append(_known("untrusted"))
    raised = fallback_assessment(untrusted, "test", analyzer)
    assert raised.risk_score == min(100, plain + UNTRUSTED_BONUS)
    assert "marked untrusted" in raised.reasoning

    trusted = batch(replace(person(), trust_status="trusted"))
    trusted.entities.append(_known("trusted"))
    lowered = fallback_assessment(trusted, "test", analyzer)
    assert lowered.risk_score == pytest.approx(plain * TRUSTED_FACTOR, abs=1)
    assert "trusted entity" in lowered.reasoning

    roaming = batch(person())
    roaming.entities.append(_known("unknown", ("Front Door", "Side", "Back Door")))
    assert fallback_assessment(roaming, "test", analyzer).risk_score > plain


def test_alert_rules_pass_over_events_of_trusted_entities_only_unless_told_not_to() -> None:
    rule = {"id": "r", "name": "anyone", "severity": "high", "risk_threshold": None,
            "object_types": None, "camera_ids": None, "zone_ids": None, "min_confidence": None,
            "schedule": None, "dedup_key_template": "{camera_id}", "cooldown_seconds": 0,
            "channels": None, "skip_trusted_entities": True}
    family = DetectionFacts("person", 0.95, frozenset(), (), "trusted")
    our_car = DetectionFacts("car", 0.9, frozenset(), (), "trusted")
    stranger = DetectionFacts("person", 0.9, frozenset(), (), "unknown")
    unrecognised = DetectionFacts("person", 0.9, frozenset(), ())
    cat = DetectionFacts("cat", 0.9, frozenset(), ())

    def event(*detections: DetectionFacts) -> EventFacts:
        return EventFacts(1, "front_door", "Front Door", 50, "medium", "s", NIGHT,
                          list(detections))

    assert match_rule(rule, event(family, our_car, cat)) is None
    assert match_rule(rule, event(family, stranger)) is not None
    assert match_rule(rule, event(family, unrecognised)) is not None
    assert match_rule(rule, event(cat)) is not None  # no people or vehicles to trust
    assert match_rule({**rule, "skip_trusted_entities": False}, event(family)) is not None
