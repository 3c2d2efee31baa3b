"""Alert rule routes: CRUD of the conditions under which an event raises an alert."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias, get_args
from uuid import UUID

import asyncpg
from pydantic import AfterValidator, Field, WithJsonSchema

from hsid.alerts.rules import WEEKDAYS, schedule_problem
from hsid.api.fields import Arr, Body, Int, Num, Obj, Shape, Text, Uuid, columns, params, partial
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page, update_one
from hsid.api.routing import ApiRoutes, Audit, Call
from hsid.core.config import AlertChannel

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES = get_args(Severity)


def _schedule(value: dict[str, Any]) -> dict[str, Any]:
    """A rule's schedule, checked exactly as the alert engine will read it."""
    if problem := schedule_problem(value):
        raise ValueError(problem)
    return value


CLOCK = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
Schedule = Annotated[Obj, AfterValidator(_schedule), WithJsonSchema({
    "type": "object", "additionalProperties": False, "properties": {
        "days": {"type": "array", "items": {"type": "string", "enum": list(WEEKDAYS)}},
        "start": CLOCK, "end": CLOCK,
        "timezone": {"type": "string",
                     "description": "IANA name; default: the site's ([site] timezone)"},
    }})]
Names: TypeAlias = Annotated[list[Annotated[str, Text(100, min_length=1)]], Arr()]


class RuleBody(Body):  # in INSERT_RULE's column order
    name: Annotated[str, Text(min_length=1)]
    description: Annotated[str, Text(10_000)] | None = None
    enabled: bool = True
    severity: Severity = "medium"
    risk_threshold: Annotated[int, Int(0, 100)] | None = Field(
        None, description="minimum risk score")
    object_types: Names | None = None
    camera_ids: Names | None = None
    zone_ids: Names | None = None
    min_confidence: Annotated[float, Num(0.0, 1.0)] | None = None
    schedule: Schedule | None = Field(None, description=(
        "when the rule applies, at the event's start: days, start-end (HH:MM, may span "
        "midnight), timezone"))
    conditions: Obj | None = Field(None, description="legacy conditions")
    dedup_key_template: Annotated[str, Text(min_length=1)] = "{camera_id}:{rule_id}"
    cooldown_seconds: Annotated[int, Int(0, 31_536_000)] = 300
    channels: Annotated[list[AlertChannel], Arr()] | None = Field(
        None, description="where alerts go; empty: alerts.default_channels")
    # hsid's extension (schema.sql): "trusted entities may skip alerts", per rule.
    skip_trusted_entities: bool = Field(True, description=(
        "pass over an event whose every person and vehicle is a trusted entity"))


RulePatch = partial(RuleBody)


class Rule(Shape):
    id: UUID
    name: str
    description: str | None
    enabled: bool
    severity: str
    risk_threshold: int | None
    object_types: Any
    camera_ids: Any
    zone_ids: Any
    min_confidence: float | None
    schedule: Any
    conditions: Any
    dedup_key_template: str
    cooldown_seconds: int
    channels: Any
    skip_trusted_entities: bool
    created_at: datetime
    updated_at: datetime


RulePath = params(rule_id=(Uuid, Field(description="alert rule id")))
RuleQuery = params(Paged, enabled=(bool, None), severity=(Severity, None))


RULE_COLUMNS = columns(Rule)
SELECT_RULE = "SELECT " + RULE_COLUMNS + " FROM alert_rules WHERE id = $1"
INSERT_RULE = (
    "INSERT INTO alert_rules (" + columns(RuleBody) + ") VALUES ("
    + ", ".join(f"${i}" for i in range(1, len(RuleBody.model_fields) + 1))
    + ") RETURNING " + RULE_COLUMNS
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

api = ApiRoutes("alert rules")


@api.get("/api/alert-rules", "List alert rules", response=Page[Rule], query=RuleQuery)
async def list_rules(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_RULES, call.query)


@api.post("/api/alert-rules", "Create an alert rule", body=RuleBody, status=201,
          response=Rule, audit=Audit("rule_created", "alert_rule"))
async def create_rule(call: Call) -> asyncpg.Record:
    row = await call.pool.fetchrow(INSERT_RULE, *map(call.body.get, RuleBody.model_fields))
    call.audit(row["id"])
    return row


@api.get("/api/alert-rules/{rule_id}", "Get an alert rule", path_params=RulePath,
         response=Rule)
async def get_rule(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_RULE, call.path["rule_id"], what="alert rule")


@api.patch("/api/alert-rules/{rule_id}", "Change an alert rule", path_params=RulePath,
           body=RulePatch, response=Rule,
           audit=Audit("rule_updated", "alert_rule", "rule_id"))
async def update_rule(call: Call) -> asyncpg.Record:
    return await update_one(call.pool, UPDATE_RULE, call.body, call.path["rule_id"],
                            what="alert rule")


@api.delete("/api/alert-rules/{rule_id}", "Delete an alert rule", path_params=RulePath,
            status=204, audit=Audit("rule_deleted", "alert_rule", "rule_id"))
async def delete_rule(call: Call) -> None:
    await fetch_one(call.pool, DELETE_RULE, call.path["rule_id"], what="alert rule")
