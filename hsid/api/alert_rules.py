"""Alert rule routes: CRUD of the conditions under which an event raises an alert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from hsid.alerts.rules import WEEKDAYS, schedule_problem
from hsid.api.fields import Arr, Body, Bool, Field, Int, Num, Obj, Shape, Str, Uuid, out
from hsid.api.queries import Listing, fetch_one, fetch_page, page_of, paged, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.config import ALERT_CHANNELS
from hsid.core.errors import InvalidInput

RULE_COLUMNS = (
    "id, name, description, enabled, severity, risk_threshold, object_types, camera_ids, "
    "zone_ids, min_confidence, schedule, conditions, dedup_key_template, cooldown_seconds, "
    "channels, skip_trusted_entities, created_at, updated_at"
)
SELECT_RULE = "SELECT " + RULE_COLUMNS + " FROM alert_rules WHERE id = $1"
INSERT_RULE = (
    "INSERT INTO alert_rules (name, description, enabled, severity, risk_threshold, "
    "object_types, camera_ids, zone_ids, min_confidence, schedule, conditions, "
    "dedup_key_template, cooldown_seconds, channels, skip_trusted_entities) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
    "RETURNING " + RULE_COLUMNS
)
UPDATE_RULE = (
    "UPDATE alert_rules SET {sets}, updated_at = now() WHERE id = $1 RETURNING " + RULE_COLUMNS
)
# Alerts the rule raised stay, with rule_id set to NULL (ON DELETE SET NULL).
DELETE_RULE = "DELETE FROM alert_rules WHERE id = $1 RETURNING id"
LIST_RULES = Listing(
    select="SELECT " + RULE_COLUMNS + " FROM alert_rules {where} "
           "ORDER BY name, id LIMIT {limit} OFFSET {offset}",
    table="alert_rules",
    filters={"enabled": "enabled = {}", "severity": "severity = {}"},
)

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule(Obj):
    """A rule's schedule, checked exactly as the alert engine will read it."""

    def constraints(self) -> dict[str, Any]:
        clock = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
        return {"additionalProperties": False, "properties": {
            "days": {"type": "array", "items": {"type": "string", "enum": list(WEEKDAYS)}},
            "start": clock, "end": clock,
            "timezone": {"type": "string",
                         "description": "IANA name; default: the site's ([site] timezone)"},
        }}

    def check(self, value: dict[str, Any], name: str) -> dict[str, Any]:
        if problem := schedule_problem(value):
            raise InvalidInput(f"{name}: {problem}", field=name)
        return value

RULE_PATH = {"rule_id": Uuid(description="alert rule id")}
NAMES = Arr(items=Str(min_length=1, max_length=100), nullable=True)
# In INSERT_RULE's column order.
FIELDS: dict[str, Field] = {
    "name": Str(min_length=1, required=True),
    "description": Str(nullable=True, max_length=10_000),
    "enabled": Bool(default=True),
    "severity": Str(enum=SEVERITIES, default="medium"),
    "risk_threshold": Int(minimum=0, maximum=100, nullable=True,
                          description="minimum risk score"),
    "object_types": NAMES,
    "camera_ids": NAMES,
    "zone_ids": NAMES,
    "min_confidence": Num(minimum=0.0, maximum=1.0, nullable=True),
    "schedule": Schedule(nullable=True, description=(
        "when the rule applies, at the event's start: days, start-end (HH:MM, may span "
        "midnight), timezone")),
    "conditions": Obj(nullable=True, description="legacy conditions"),
    "dedup_key_template": Str(min_length=1, default="{camera_id}:{rule_id}"),
    "cooldown_seconds": Int(minimum=0, maximum=31_536_000, default=300),
    "channels": Arr(items=Str(enum=ALERT_CHANNELS), nullable=True,
                    description="where alerts go; empty: alerts.default_channels"),
    # hsid's extension (schema.sql): "trusted entities may skip alerts", per rule.
    "skip_trusted_entities": Bool(default=True, description=(
        "pass over an event whose every person and vehicle is a trusted entity")),
}
RULE = Shape({
    "id": out("string", format="uuid"),
    "name": out("string"),
    "description": out("string", nullable=True),
    "enabled": out("boolean"),
    "severity": out("string"),
    "risk_threshold": out("integer", nullable=True),
    "object_types": out(None),
    "camera_ids": out(None),
    "zone_ids": out(None),
    "min_confidence": out("number", nullable=True),
    "schedule": out(None),
    "conditions": out(None),
    "dedup_key_template": out("string"),
    "cooldown_seconds": out("integer"),
    "channels": out(None),
    "skip_trusted_entities": out("boolean"),
    "created_at": out("string", format="date-time"),
    "updated_at": out("string", format="date-time"),
})

api = ApiRoutes("alert rules")


@api.get("/api/alert-rules", "List alert rules", response=page_of(RULE),
         query=paged({"enabled": Bool(), "severity": Str(enum=SEVERITIES)}))
async def list_rules(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_RULES, call.query)


@api.post("/api/alert-rules", "Create an alert rule", body=Body(FIELDS), status=201,
          response=RULE, audit=Audit("rule_created", "alert_rule"))
async def create_rule(call: Call) -> asyncpg.Record:
    row = await call.pool.fetchrow(INSERT_RULE, *(call.body.get(name) for name in FIELDS))
    call.audit(row["id"])
    return row


@api.get("/api/alert-rules/{rule_id}", "Get an alert rule", path_params=RULE_PATH,
         response=RULE)
async def get_rule(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_RULE, call.path["rule_id"], what="alert rule")


@api.patch("/api/alert-rules/{rule_id}", "Change an alert rule", path_params=RULE_PATH,
           body=Body(FIELDS, partial=True), response=RULE,
           audit=Audit("rule_updated", "alert_rule", "rule_id"))
async def update_rule(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_RULE, call.body, call.path["rule_id"],
                            what="alert rule")


@api.delete("/api/alert-rules/{rule_id}", "Delete an alert rule", path_params=RULE_PATH,
            status=204, audit=Audit("rule_deleted", "alert_rule", "rule_id"))
async def delete_rule(call: Call) -> None:
    await fetch_one(call.pool, DELETE_RULE, call.path["rule_id"], what="alert rule")
