"""Alert rules: which enabled rules an event matches, and the one alert it raises.

Evaluated inside the event's own transaction, so an event and its alert are committed
together: a crash can't leave an event that never had its rules checked, and a retried
analysis job (the event already stored) raises nothing twice.

Matching is the AND of every condition a rule sets. The detection conditions (object_types,
min_confidence, zone_ids) must all hold for one and the same detection: "a person, at least
80 % sure, in the porch zone" is what a rule with those three means. camera_ids and zone_ids
left empty mean any. `conditions` (legacy) is stored but not evaluated. A rule with
skip_trusted_entities (hsid's extension, on by default) passes over an event whose every
person and vehicle was recognised as a trusted entity (entities/matcher.py): the
neighbour's car, marked trusted, raises nothing; a stranger beside it still does.

An event raises at most one alert: of the matching rules not in cooldown, the highest
severity wins (ties: rule name) and gives the alert its rule, severity and dedup key; the
alert goes to the channels of every such rule, so no one who asked to hear of it is left out.
A rule is in cooldown while an alert with its dedup key is younger than its cooldown_seconds;
the key is taken under a transaction-scoped advisory lock, so two workers analysing the same
camera at once can't both pass the check.

Episodes (pipeline/batcher.py): the fast-path event of a person walking past and its
follow-ups carry one episode id (kept in the alert's metadata). Within an episode a rule's
dedup key alerts once: a follow-up passes only if its risk level is higher than every alert
of that key in the episode so far, and then whatever the cooldown, since an escalation is
news, not a repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import structlog

from hsid.alerts.channels import alert_data
from hsid.core.config import AlertsConfig
from hsid.entities.matcher import ENTITY_CLASSES

log = structlog.get_logger(__name__)

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
SCHEDULE_KEYS = frozenset({"days", "start", "end", "timezone"})
DEDUP_KEY_MAX = 255  # alerts.dedup_key is varchar(255)

SELECT_ENABLED_RULES = """
SELECT id, name, severity, risk_threshold, object_types, camera_ids, zone_ids, min_confidence,
       schedule, dedup_key_template, cooldown_seconds, channels, skip_trusted_entities
FROM alert_rules WHERE enabled ORDER BY name, id
"""
LOCK_DEDUP_KEY = "SELECT pg_advisory_xact_lock(hashtext($1))"
# The risk levels alerted under a dedup key in one episode; episodes last minutes, the day's
# bound keeps the scan on idx_alerts_dedup_key_created_at.
EPISODE_ALERT_LEVELS = """
SELECT metadata->>'risk_level' FROM alerts
WHERE dedup_key = $1 AND created_at > clock_timestamp() - interval '1 day'
  AND metadata->>'episode_id' = $2
"""
IN_COOLDOWN = """
SELECT EXISTS (SELECT 1 FROM alerts
               WHERE dedup_key = $1 AND created_at > clock_timestamp() - make_interval(secs => $2))
"""
INSERT_ALERT = """
INSERT INTO alerts (event_id, rule_id, severity, channels, dedup_key, metadata)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, event_id, rule_id, severity, created_at, dedup_key, metadata
"""


@dataclass(frozen=True, slots=True)
class DetectionFacts:
    """What a rule can ask of one detection."""

    object_type: str
    confidence: float
    zone_ids: frozenset[str]
    zone_names: tuple[str, ...]
    trust_status: str | None = None  # of the entity it was recognised as; None: none


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a rule can ask of one event."""

    event_id: int
    camera_id: str
    camera_name: str
    risk_score: int
    risk_level: str
    summary: str
    started_at: datetime  # timezone-aware
    detections: Sequence[DetectionFacts]
    episode_id: str | None = None  # the fast path and follow-ups of one person walking past


@dataclass(frozen=True, slots=True)
class RuleMatch:
    rule: Mapping[str, Any]
    detection: DetectionFacts | None  # the detection that met the detection conditions
    dedup_key: str


def schedule_problem(schedule: Mapping[str, Any]) -> str | None:
    """Why a rule's schedule can't be used, or None. Shared by the API (a 422) and the
    engine, which ignores a broken schedule, as alerting is safer than staying silent.

    {"days": ["mon", ...], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"}:
    every key optional; start after end spans midnight; the timezone defaults to the
    site's ([site] timezone); the time checked is when the event started (its first
    snapshot's capture time).
    """
    if unknown := sorted(set(schedule) - SCHEDULE_KEYS):
        expected = ", ".join(sorted(SCHEDULE_KEYS))
        return f"unknown key {', '.join(unknown)}; expected some of {expected}"
    days = schedule.get("days")
    if days is not None and (
        not isinstance(days, list) or not all(isinstance(d, str) and d in WEEKDAYS for d in days)
    ):
        return f"days must be a list of {', '.join(WEEKDAYS)}"
    for key in ("start", "end"):
        if key in schedule and _clock_time(schedule[key]) is None:
            return f"{key} must be HH:MM (00:00 to 23:59)"
    if ("start" in schedule) != ("end" in schedule):
        return "start and end go together"
    zone = schedule.get("timezone")
    if zone is not None and _timezone(zone) is None:
        return f"timezone {zone!r} is not an IANA time zone name such as Europe/Berlin"
    return None


def in_schedule(schedule: Mapping[str, Any], moment: datetime,
                site_zone: tzinfo | None = None) -> bool:
    """Does a valid schedule (see schedule_problem) cover `moment`? A schedule without a
    timezone is read in `site_zone` (None: the system's)."""
    zone = schedule.get("timezone")
    local = moment.astimezone(_timezone(zone) if zone else site_zone)
    start, end = _clock_time(schedule.get("start")), _clock_time(schedule.get("end"))
    day = local.weekday()
    if start is not None and end is not None:
        now = local.time()
        if start <= end:
            in_window = start <= now < end
        else:  # across midnight: the early hours belong to the previous day's window
            in_window = now >= start or now < end
            if now < end:
                day = (day - 1) % 7
        if not in_window:
            return False
    days = schedule.get("days")
    return not days or WEEKDAYS[day] in days


def match_rule(rule: Mapping[str, Any], event: EventFacts,
               site_zone: tzinfo | None = None) -> RuleMatch | None:
    """The rule's match for `event`, or None when one of its set conditions fails;
    schedules without a timezone are read in `site_zone`."""
    if rule["camera_ids"] and event.camera_id not in rule["camera_ids"]:
        return None
    if rule.get("skip_trusted_entities", True) and only_trusted_entities(event):
        log.info("alert_rule_skipped_trusted", rule=rule["name"], event_id=event.event_id)
        return None
    if rule["risk_threshold"] is not None and event.risk_score < rule["risk_threshold"]:
        return None
    schedule = rule["schedule"]
    if schedule:
        if problem := schedule_problem(schedule):
            log.warning("alert_rule_schedule_ignored", rule_id=str(rule["id"]),
                        rule=rule["name"], problem=problem)
        elif not in_schedule(schedule, event.started_at, site_zone):
            return None
    detection = next((d for d in event.detections if _detection_matches(rule, d)), None)
    asks_of_detection = (rule["object_types"] or rule["zone_ids"]
                         or rule["min_confidence"] is not None)
    if asks_of_detection and detection is None:
        return None
    return RuleMatch(rule, detection, _dedup_key(rule, event, detection))


async def raise_alert(conn: asyncpg.Connection, event: EventFacts, config: AlertsConfig, *,
                      zone: tzinfo | None = None) -> dict[str, Any] | None:
    """Evaluate the enabled rules for `event` and insert its alert; returns the alert as
    channels send it (alert_data), None when no rule matched or all that did are in
    cooldown. Call it inside the transaction that inserts the event."""
    rules = await conn.fetch(SELECT_ENABLED_RULES)
    matches = [m for rule in rules if (m := match_rule(rule, event, zone)) is not None]
    live = []
    for match in sorted(matches, key=lambda m: m.dedup_key):  # one lock order: no deadlock
        await conn.execute(LOCK_DEDUP_KEY, match.dedup_key)
        if event.episode_id is not None and (
                prior := await _episode_rank(conn, match.dedup_key, event.episode_id)) is not None:
            if SEVERITY_RANK.get(event.risk_level, 0) > prior:
                live.append(match)  # the episode escalated
            else:
                log.info("alert_in_episode", rule=match.rule["name"], dedup_key=match.dedup_key,
                         episode_id=event.episode_id)
            continue
        if await conn.fetchval(IN_COOLDOWN, match.dedup_key, match.rule["cooldown_seconds"]):
            log.info("alert_in_cooldown", rule=match.rule["name"], dedup_key=match.dedup_key)
        else:
            live.append(match)
    if not live:
        return None
    live.sort(key=lambda m: (-SEVERITY_RANK[m.rule["severity"]], m.rule["name"]))
    winner = live[0]
    channels = list(dict.fromkeys(
        channel for m in live for channel in (m.rule["channels"] or config.default_channels)))
    row = await conn.fetchrow(
        INSERT_ALERT, event.event_id, winner.rule["id"], winner.rule["severity"], channels,
        winner.dedup_key, _metadata(event, live))
    log.info("alert_raised", alert_id=str(row["id"]), rule=winner.rule["name"],
             severity=winner.rule["severity"], channels=channels)
    return alert_data(row)


async def _episode_rank(conn: asyncpg.Connection, dedup_key: str, episode_id: str) -> int | None:
    """The highest risk level alerted under `dedup_key` in the episode; None for none."""
    levels = [row[0] for row in await conn.fetch(EPISODE_ALERT_LEVELS, dedup_key, episode_id)]
    return max((SEVERITY_RANK.get(level, 0) for level in levels), default=None)


def only_trusted_entities(event: EventFacts) -> bool:
    """Whether the event has people or vehicles and every one is a trusted entity."""
    watched = [d for d in event.detections if d.object_type in ENTITY_CLASSES]
    return bool(watched) and all(d.trust_status == "trusted" for d in watched)


def _detection_matches(rule: Mapping[str, Any], detection: DetectionFacts) -> bool:
    if rule["object_types"] and detection.object_type not in rule["object_types"]:
        return False
    if rule["min_confidence"] is not None and detection.confidence < rule["min_confidence"]:
        return False
    return not rule["zone_ids"] or bool(detection.zone_ids.intersection(rule["zone_ids"]))


class _KeepUnknown(dict[str, str]):
    """format_map values: a placeholder the event can't fill stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _dedup_key(rule: Mapping[str, Any], event: EventFacts,
               detection: DetectionFacts | None) -> str:
    """The rule's dedup_key_template filled in: {camera_id}, {rule_id}, {object_type},
    {severity}, {risk_level}. A template that isn't a valid format string is used as is."""
    values = _KeepUnknown(
        camera_id=event.camera_id, rule_id=str(rule["id"]), severity=rule["severity"],
        risk_level=event.risk_level,
        object_type=detection.object_type if detection else "",
    )
    template = rule["dedup_key_template"]
    try:
        key = template.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError):
        key = template
    return key[:DEDUP_KEY_MAX]


def _metadata(event: EventFacts, live: list[RuleMatch]) -> dict[str, Any]:
    winner = live[0].rule
    object_types = {d.object_type: None for d in event.detections}
    zones = {name: None for d in event.detections for name in d.zone_names}
    return {
        "camera_id": event.camera_id,
        "camera_name": event.camera_name,
        "risk_score": event.risk_score,
        "risk_level": event.risk_level,
        "summary": event.summary,
        "started_at": event.started_at.isoformat(),
        "rule_name": winner["name"],
        "matched_rules": [{"id": str(m.rule["id"]), "name": m.rule["name"],
                           "severity": m.rule["severity"]} for m in live],
        "object_types": list(object_types),
        "zones": list(zones),
        **({"episode_id": event.episode_id} if event.episode_id else {}),
    }


def _clock_time(value: Any) -> time | None:
    if not isinstance(value, str):
        return None
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            return None
        return time(int(hours), int(minutes))
    except ValueError:
        return None


def _timezone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
