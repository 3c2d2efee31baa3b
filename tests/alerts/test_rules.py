"""Alert rules: schedules, matching, the one alert an event raises, cooldown, and the analyze
worker storing an event and its alert together."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from hsid.alerts.rules import (
    DetectionFacts,
    EventFacts,
    in_schedule,
    match_rule,
    raise_alert,
    schedule_problem,
)
from hsid.analysis.llm import RiskScorer
from hsid.analysis.prompts import seed_default_prompt
from hsid.core.config import AlertsConfig, Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.core.queues import ReliableQueue
from hsid.pipeline.analyze_worker import AnalyzeWorker
from tests import seed
from tests.support import eventually

CAMERA = "porch_cam"
FRIDAY_NIGHT = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)  # a Friday
PERSON_ON_PORCH = DetectionFacts("person", 0.95, frozenset({"z-porch"}), ("Porch",))
SURE_CAR = DetectionFacts("car", 0.97, frozenset(), ())
UNSURE_PERSON = DetectionFacts("person", 0.55, frozenset({"z-porch"}), ("Porch",))


def _rule(**conditions: Any) -> dict[str, Any]:
    """An alert_rules row as the engine reads it: nothing set, so it matches everything."""
    row = {"id": uuid.uuid4(), "name": "rule", "severity": "medium", "risk_threshold": None,
           "object_types": None, "camera_ids": None, "zone_ids": None, "min_confidence": None,
           "schedule": None, "dedup_key_template": "{camera_id}:{rule_id}",
           "cooldown_seconds": 300, "channels": None}
    row.update(conditions)
    return row


def _event(*detections: DetectionFacts, score: int = 70, event_id: int = 1,
           started_at: datetime = FRIDAY_NIGHT) -> EventFacts:
    return EventFacts(event_id=event_id, camera_id=CAMERA, camera_name="Porch camera",
                      risk_score=score, risk_level="high" if score >= 60 else "medium",
                      summary="Someone at the door", started_at=started_at,
                      detections=list(detections) or [PERSON_ON_PORCH])


# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "problem"), [
    ({"hours": "night"}, "unknown key hours"),
    ({"days": ["friday"]}, "days must be a list of mon"),
    ({"days": "mon"}, "days must be a list"),
    ({"start": "22:00"}, "start and end go together"),
    ({"start": "24:00", "end": "06:00"}, "start must be HH:MM"),
    ({"start": "9:00", "end": "17:00"}, "start must be HH:MM"),
    ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
])
def test_schedule_problems_are_named(schedule: dict[str, Any], problem: str) -> None:
    found = schedule_problem(schedule)
    assert found is not None and problem in found


def test_a_full_schedule_is_valid() -> None:
    schedule = {"days": ["fri", "sat"], "start": "22:00", "end": "06:00",
                "timezone": "Europe/Berlin"}
    assert schedule_problem(schedule) is None


def test_night_window_spans_midnight_and_belongs_to_the_day_it_began() -> None:
    friday_night = {"days": ["fri"], "start": "22:00", "end": "06:00", "timezone": "UTC"}
    saturday_2am = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)

    assert in_schedule(friday_night, FRIDAY_NIGHT)
    assert in_schedule(friday_night, saturday_2am)
    assert not in_schedule(friday_night, saturday_2am + timedelta(hours=5))  # 07:00
    assert not in_schedule(friday_night, FRIDAY_NIGHT - timedelta(hours=2))  # 21:00
    assert not in_schedule(friday_night, saturday_2am + timedelta(days=1))  # Sunday 02:00


def test_schedule_reads_the_clock_in_its_timezone() -> None:
    evening = {"start": "22:00", "end": "23:00", "timezone": "Europe/Berlin"}  # UTC+1 in Nov
    assert in_schedule(evening, datetime(2026, 11, 26, 21, 30, tzinfo=UTC))
    assert not in_schedule(evening, datetime(2026, 11, 26, 22, 30, tzinfo=UTC))


def test_a_schedule_without_a_timezone_reads_the_sites_clock() -> None:
    night = {"days": ["thu"], "start": "22:00", "end": "06:00"}
    la = ZoneInfo("America/Los_Angeles")
    afternoon = datetime(2026, 11, 26, 15, 30, tzinfo=la)  # Thursday 23:30 UTC
    assert in_schedule(night, afternoon, ZoneInfo("UTC"))  # a server in UTC: night
    assert not in_schedule(night, afternoon, la)  # in the house: the afternoon
    assert in_schedule(night, datetime(2026, 11, 26, 23, 10, tzinfo=la), la)
    rule = _rule(schedule=night)
    assert match_rule(rule, _event(started_at=afternoon), la) is None
    assert match_rule(rule, _event(started_at=afternoon), ZoneInfo("UTC")) is not None


# --- matching --------------------------------------------------------------------------------


def test_detection_conditions_must_hold_for_one_detection() -> None:
    rule = _rule(object_types=["person"], min_confidence=0.9)

    assert match_rule(rule, _event(UNSURE_PERSON, SURE_CAR)) is None
    match = match_rule(rule, _event(SURE_CAR, PERSON_ON_PORCH))
    assert match is not None and match.detection == PERSON_ON_PORCH


@pytest.mark.parametrize(("conditions", "matches"), [
    ({}, True),
    ({"camera_ids": [], "zone_ids": [], "object_types": []}, True),  # empty means any
    ({"camera_ids": ["garage"]}, False),
    ({"camera_ids": ["garage", CAMERA]}, True),
    ({"risk_threshold": 71}, False),
    ({"risk_threshold": 70}, True),
    ({"zone_ids": ["z-drive"]}, False),
    ({"zone_ids": ["z-drive", "z-porch"]}, True),
    ({"schedule": {"days": ["mon"]}}, False),
    ({"schedule": {"days": ["fri"], "timezone": "UTC"}}, True),
])
def test_every_set_condition_must_hold(conditions: dict[str, Any], matches: bool) -> None:
    assert (match_rule(_rule(**conditions), _event()) is not None) is matches


def test_broken_schedule_is_ignored_rather_than_silencing_the_rule() -> None:
    assert match_rule(_rule(schedule={"days": "weekends"}), _event()) is not None


def test_dedup_key_template_is_filled_in() -> None:
    rule = _rule(dedup_key_template="{camera_id}/{object_type}/{risk_level}/{nope}")
    match = match_rule(rule, _event())
    assert match is not None and match.dedup_key == f"{CAMERA}/person/high/{{nope}}"
    odd = match_rule(_rule(dedup_key_template="{camera_id"), _event())
    assert odd is not None and odd.dedup_key == "{camera_id"


# --- raising alerts in the database ----------------------------------------------------------


@pytest.fixture
async def stored_events(db: asyncpg.Pool) -> list[int]:
    """A camera and three stored events to hang alerts on."""
    await seed.camera(db, CAMERA, name="Porch")
    return [await seed.event(db, CAMERA, risk_score=70, risk_level="high",
                             started_at=FRIDAY_NIGHT) for _ in range(3)]


async def _insert_rule(db: asyncpg.Pool, name: str, severity: str, **columns: Any) -> str:
    columns = {"name": name, "severity": severity, **columns}
    names = ", ".join(columns)
    marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    return str(await db.fetchval(
        f"INSERT INTO alert_rules ({names}) VALUES ({marks}) RETURNING id", *columns.values()))


async def _raise(db: asyncpg.Pool, event: EventFacts,
                 config: AlertsConfig | None = None) -> str | None:
    """The id of the alert the event raised, if any."""
    async with db.acquire() as conn, conn.transaction():
        alert = await raise_alert(conn, event, config or AlertsConfig())
    return None if alert is None else alert["id"]


async def test_highest_severity_wins_and_every_matching_rule_is_heard(
    db: asyncpg.Pool, stored_events: list[int],
) -> None:
    critical = await _insert_rule(db, "night porch", "critical", zone_ids=["z-porch"],
                                  channels=["webhook"])
    await _insert_rule(db, "any high risk", "high", risk_threshold=60, channels=["mqtt", "log"])
    await _insert_rule(db, "defaults", "low")  # no channels: alerts.default_channels
    await _insert_rule(db, "cars only", "critical", object_types=["car"], channels=["mqtt"])
    await _insert_rule(db, "switched off", "critical", enabled=False, channels=["webhook"])

    alert_id = await _raise(db, _event(event_id=stored_events[0]),
                            AlertsConfig(default_channels=("log",)))

    alert = await db.fetchrow("SELECT * FROM alerts WHERE id = $1", uuid.UUID(alert_id))
    assert await db.fetchval("SELECT count(*) FROM alerts") == 1
    assert alert["event_id"] == stored_events[0]
    assert str(alert["rule_id"]) == critical
    assert (alert["severity"], alert["status"]) == ("critical", "pending")
    assert alert["channels"] == ["webhook", "mqtt", "log"]
    assert alert["dedup_key"] == f"{CAMERA}:{critical}"
    meta = alert["metadata"]
    assert [r["name"] for r in meta["matched_rules"]] == ["night porch", "any high risk",
                                                         "defaults"]
    assert (meta["camera_id"], meta["risk_score"], meta["zones"]) == (CAMERA, 70, ["Porch"])


async def test_no_matching_rule_raises_nothing(db: asyncpg.Pool,
                                               stored_events: list[int]) -> None:
    await _insert_rule(db, "very high risk", "high", risk_threshold=90)
    assert await _raise(db, _event(event_id=stored_events[0])) is None
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0


async def test_a_rule_in_cooldown_stays_quiet_and_others_still_speak(
    db: asyncpg.Pool, stored_events: list[int],
) -> None:
    loud = await _insert_rule(db, "loud", "critical", cooldown_seconds=600)
    first = await _raise(db, _event(event_id=stored_events[0]))
    quiet = await _insert_rule(db, "quiet", "low", cooldown_seconds=0)

    second = await _raise(db, _event(event_id=stored_events[1]))
    third = await _raise(db, _event(event_id=stored_events[2]))

    rule_of = dict(await db.fetch("SELECT id::text, rule_id::text FROM alerts"))
    assert rule_of[first] == loud
    assert rule_of[second] == quiet and rule_of[third] == quiet  # cooldown 0: every time
    await db.execute("UPDATE alerts SET created_at = now() - interval '11 minutes'")
    again = await _raise(db, _event(event_id=stored_events[2]))
    assert again is not None and rule_of.get(again) is None
    assert str(await db.fetchval("SELECT rule_id FROM alerts WHERE id = $1",
                                 uuid.UUID(again))) == loud


async def test_a_rule_alerts_once_per_episode_unless_a_follow_up_is_riskier(
    db: asyncpg.Pool, stored_events: list[int],
) -> None:
    await _insert_rule(db, "door", "high", cooldown_seconds=0)  # no cooldown: the episode rules
    fast, same, riskier = stored_events[:3]
    episode = "e-1"
    first = await _raise(db, replace(_event(score=40, event_id=fast), episode_id=episode))
    assert first is not None
    assert await _raise(db, replace(_event(score=45, event_id=same), episode_id=episode)) is None
    escalated = await _raise(db, replace(_event(score=70, event_id=riskier), episode_id=episode))
    assert escalated is not None  # medium, then high: news, not a repeat
    assert await _raise(db, replace(_event(score=75, event_id=riskier), episode_id=episode)) is None
    # Another episode (someone else, later) alerts again.
    assert await _raise(db, replace(_event(score=40, event_id=same), episode_id="e-2")) is not None
    episodes = [row[0] for row in await db.fetch(
        "SELECT metadata->>'episode_id' FROM alerts ORDER BY created_at")]
    assert episodes == ["e-1", "e-1", "e-2"]


async def test_two_workers_racing_on_one_dedup_key_raise_one_alert(
    db: asyncpg.Pool, stored_events: list[int],
) -> None:
    await _insert_rule(db, "door", "high", cooldown_seconds=300)

    results = await asyncio.gather(*(_raise(db, _event(event_id=event_id))
                                     for event_id in stored_events))

    assert sum(result is not None for result in results) == 1
    assert await db.fetchval("SELECT count(*) FROM alerts") == 1


# --- the analyze worker ----------------------------------------------------------------------


@pytest.fixture
async def analysis(config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
                   camera_root: Path) -> AsyncIterator[ReliableQueue]:
    """A running analyze worker (rule-based scoring) and a porch zone on the camera."""
    await seed.camera(db, CAMERA, folder=str(camera_root / CAMERA), name="Porch")
    await db.execute(
        "INSERT INTO zones (id, camera_id, name, zone_type, coordinates) "
        "VALUES ('z-porch', $1, 'Porch', 'entry_point', $2)",
        CAMERA, [[0.0, 0.0], [1.0, 1.0]])
    await seed_default_prompt(db)
    scorer = RiskScorer(config.analyzer)
    await scorer.load()
    queue = ReliableQueue(redis, "analysis_queue", "test-alerts", config.queues,
                          keyspace=keyspace)
    stopping = asyncio.Event()
    task = asyncio.create_task(AnalyzeWorker(
        StageContext(config, db, redis, keyspace, stopping=stopping), queue, scorer).run())
    yield queue
    stopping.set()
    await asyncio.wait_for(task, 10)


async def _detection(db: asyncpg.Pool, camera_root: Path, kind: str = "person") -> int:
    return await db.fetchval(
        "INSERT INTO detections (camera_id, file_path, detected_at, object_type, confidence, "
        "bbox_x, bbox_y, bbox_width, bbox_height) VALUES ($1, $2, $3, $4, 0.93, 100, 100, "
        "200, 400) RETURNING id", CAMERA, str(camera_root / "gone.jpg"), FRIDAY_NIGHT, kind)


async def test_event_and_its_alert_are_stored_together_and_published(
    analysis: ReliableQueue, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
    camera_root: Path,
) -> None:
    rule = await _insert_rule(db, "person on porch", "high", object_types=["person"],
                              zone_ids=["z-porch"], channels=["log"])
    detection = await _detection(db, camera_root)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keyspace.channel("security_events"))

    await analysis.push({"batch_id": "b-alert", "camera_id": CAMERA,
                         "detection_ids": [detection]})

    alert = await eventually(lambda: db.fetchrow("SELECT * FROM alerts"))
    event = await db.fetchrow("SELECT * FROM events WHERE batch_id = 'b-alert'")
    assert alert["event_id"] == event["id"]
    assert str(alert["rule_id"]) == rule
    assert alert["metadata"]["risk_score"] == event["risk_score"]
    assert alert["metadata"]["zones"] == ["Porch"]
    # Clients hear of the event, then of its alert, in the channels' payload shape.
    kinds = []
    while len(kinds) < 2:
        message = await eventually(lambda: pubsub.get_message(ignore_subscribe_messages=True,
                                                              timeout=0.1))
        kinds.append(json.loads(message["data"]))
    assert [m["type"] for m in kinds] == ["event", "alert"]
    data = kinds[1]["data"]
    assert (data["id"], data["event_id"], data["rule_id"]) == (str(alert["id"]), event["id"],
                                                              rule)
    assert (data["severity"], data["camera_id"], data["rule_name"]) == (
        "high", CAMERA, "person on porch")
    await pubsub.aclose()


async def test_a_broken_rule_never_costs_the_event(
    analysis: ReliableQueue, db: asyncpg.Pool, camera_root: Path,
) -> None:
    # object_types must be a list; one written past the API is a number
    await db.execute("INSERT INTO alert_rules (name, object_types) VALUES ('bad', $1)", 5)
    detection = await _detection(db, camera_root)

    with capture_logs() as logs:
        await analysis.push({"batch_id": "b-bad", "camera_id": CAMERA,
                             "detection_ids": [detection]})
        event = await eventually(lambda: db.fetchrow("SELECT * FROM events"))

    assert event["batch_id"] == "b-bad"
    assert await db.fetchval("SELECT count(*) FROM alerts") == 0
    assert json.loads(event["detection_ids"]) == [detection]
    assert any(entry["event"] == "alert_rules_failed" for entry in logs)
