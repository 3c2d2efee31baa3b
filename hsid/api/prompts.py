"""Prompt routes: each model's prompt config, saved as numbered versions, with optimistic
locking and rollback."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import asyncpg

from hsid.api.fields import Body, Field, Int, Num, Shape, Text, columns, params
from hsid.api.queries import Listing, Page, Paged, fetch_one, fetch_page
from hsid.api.routing import ApiRoutes, Audit, Call, parse_body
from hsid.core.db import schema_sql
from hsid.core.errors import Conflict, InvalidInput


def _allowed_models(sql: str) -> tuple[str, ...]:
    """The prompt_versions.model CHECK values: schema.sql is the one list of models."""
    found = re.search(r"ck_prompt_versions_model\s+CHECK\s*\(\s*model\s+IN\s*\(([^)]*)\)", sql)
    if found is None:
        raise RuntimeError("schema.sql has no ck_prompt_versions_model CHECK")
    return tuple(re.findall(r"'([^']+)'", found.group(1)))


MODELS = _allowed_models(schema_sql())
if TYPE_CHECKING:  # the values come from schema.sql: to a type checker, any str
    Model: TypeAlias = str
else:
    Model = Literal[MODELS]


class Prompt(Shape):
    model: Model
    system_prompt: str
    temperature: float
    max_tokens: int
    version: int
    created_at: datetime
    updated_at: datetime


class PromptConfig(Body):  # what a version saves (config_json)
    system_prompt: Annotated[str, Text(100_000, min_length=1)]
    temperature: Annotated[float, Num(0.0, 2.0)] = 0.7
    max_tokens: Annotated[int, Int(100, 8192)] = 2048


class PromptBody(PromptConfig):
    version: Annotated[int, Int(ge=0)] = Field(
        description="the version the client edited (0 when the model has none)")
    change_description: Annotated[str, Text(10_000)] | None = None


class Version(Shape):
    id: int
    model: str
    version: int
    created_at: datetime
    created_by: str | None
    change_description: str | None
    is_active: bool
    row_version: int
    config: Any = Field(description="the saved configuration (null if unreadable)")


ModelPath = params(model=(Model, Field(description="AI model")))
RollbackPath = params(ModelPath, version=(Annotated[int, Int(ge=1)],
                                          Field(description="version to restore")))


PROMPT_COLUMNS = columns(Prompt)
SELECT_PROMPT = "SELECT " + PROMPT_COLUMNS + " FROM prompt_configs WHERE model = $1"
# Serialises writers of one model, also before its first row exists (nothing to lock yet).
# The two-int form keeps these locks apart from the schema lock's single-key space.
LOCK_MODEL = "SELECT pg_advisory_xact_lock(1886547821, hashtext($1))"  # 0x7072_6f6d "prom"
SELECT_CURRENT_VERSION = """
SELECT greatest(
    (SELECT version FROM prompt_configs WHERE model = $1),
    (SELECT max(version) FROM prompt_versions WHERE model = $1)) AS latest,
    (SELECT version FROM prompt_configs WHERE model = $1) AS current
"""
DEACTIVATE_VERSIONS = """
UPDATE prompt_versions SET is_active = false, row_version = row_version + 1
WHERE model = $1 AND is_active
"""
INSERT_VERSION = """
INSERT INTO prompt_versions (model, version, created_by, config_json, change_description,
                             is_active)
VALUES ($1, $2, $3, $4, $5, true)
"""
UPSERT_PROMPT = """
INSERT INTO prompt_configs (model, system_prompt, temperature, max_tokens, version)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (model) DO UPDATE SET system_prompt = EXCLUDED.system_prompt,
    temperature = EXCLUDED.temperature, max_tokens = EXCLUDED.max_tokens,
    version = EXCLUDED.version, updated_at = now()
RETURNING """ + PROMPT_COLUMNS
SELECT_VERSION_CONFIG = (
    "SELECT config_json FROM prompt_versions WHERE model = $1 AND version = $2"
)
VERSION_COLUMNS = columns(Version, sql={"config": "config_json"})  # version_json reads it


def version_json(row: asyncpg.Record) -> dict[str, Any]:
    version = dict(row)
    try:
        version["config"] = json.loads(version.pop("config_json"))
    except ValueError:
        version["config"] = None
    return version


LIST_VERSIONS = Listing(
    select="SELECT " + VERSION_COLUMNS + " FROM prompt_versions {where} "
           "ORDER BY version DESC LIMIT {limit} OFFSET {offset}",
    table="prompt_versions",
    filters={"model": "model = {}"},
    row=version_json,
)

api = ApiRoutes("prompts")


async def _save(
    conn: asyncpg.Connection, model: str, config: dict[str, Any], actor: str,
    description: str | None, expected: int | None,
) -> asyncpg.Record:
    """Write `config` as the model's next version, active, in the caller's transaction.
    `expected` (a PUT) must be the current version, else Conflict; None skips that check."""
    await conn.execute(LOCK_MODEL, model)
    versions = await conn.fetchrow(SELECT_CURRENT_VERSION, model)
    current = versions["current"] or 0
    if expected is not None and expected != current:
        raise Conflict(f"{model} prompt is at version {current}, not {expected}: "
                       "reload it and apply the change again")
    new_version = (versions["latest"] or 0) + 1
    await conn.execute(DEACTIVATE_VERSIONS, model)
    await conn.execute(INSERT_VERSION, model, new_version, actor, json.dumps(config),
                       description)
    return await conn.fetchrow(UPSERT_PROMPT, model, config["system_prompt"],
                               config["temperature"], config["max_tokens"], new_version)


@api.get("/api/prompts/{model}", "Get a model's current prompt config", path_params=ModelPath,
         response=Prompt)
async def get_prompt(call: Call) -> asyncpg.Record:
    return await fetch_one(call.pool, SELECT_PROMPT, call.path["model"],
                           what=f"prompt config for {call.path['model']}")


@api.put(
    "/api/prompts/{model}", "Save a new version of a model's prompt config",
    path_params=ModelPath, body=PromptBody, response=Prompt,
    audit=Audit("prompt_updated", "prompt", "model"),
)
async def put_prompt(call: Call) -> asyncpg.Record:
    config = {name: call.body[name] for name in PromptConfig.model_fields}
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _save(conn, call.path["model"], config, call.actor,
                          call.body.get("change_description"), call.body["version"])
    call.audit(version=row["version"])
    return row


@api.get("/api/prompts/{model}/versions", "List a model's prompt versions, newest first",
         path_params=ModelPath, query=Paged, response=Page[Version])
async def list_prompt_versions(call: Call) -> dict:
    return await fetch_page(call.pool, LIST_VERSIONS, {**call.query, **call.path})


@api.post(
    "/api/prompts/{model}/rollback/{version}",
    "Make an earlier version's config current again (saved as a new version)",
    path_params=RollbackPath, response=Prompt, audit=Audit("prompt_rolled_back", "prompt", "model"),
)
async def rollback_prompt(call: Call) -> asyncpg.Record:
    model, version = call.path["model"], call.path["version"]
    async with call.pool.acquire() as conn, conn.transaction():
        saved = await fetch_one(conn, SELECT_VERSION_CONFIG, model, version,
                                what=f"{model} prompt version {version}")
        try:
            stored = json.loads(saved[0])
            # Evaluation figures (analysis/prompts.py) belong to the version measured, not
            # to the restored copy: it is measured afresh.
            config = parse_body(PromptConfig,
                {k: v for k, v in stored.items() if k != "evaluation"}
                if isinstance(stored, dict) else stored)
        except (ValueError, InvalidInput) as err:
            raise Conflict(f"{model} prompt version {version} cannot be restored: {err}") \
                from err
        row = await _save(conn, model, config, call.actor,
                          f"rollback to version {version}", None)
    call.audit(restored=version, version=row["version"])
    return row
