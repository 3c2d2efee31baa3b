"""The analyzer's prompt: seeding the default and reading the active prompt_configs row."""

from __future__ import annotations

import json

import asyncpg

from hsid.analysis.llm import DEFAULT_SYSTEM_PROMPT, PromptSettings
from hsid.core.constants import ANALYZER_PROMPT_MODEL

# Scoring wants consistency more than creativity; 600 tokens cover the grammar's bounded JSON
# (200 + 600 characters of text) even when a small model rambles.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_MAX_TOKENS = 600

SEED_CONFIG = """
INSERT INTO prompt_configs (model, system_prompt, temperature, max_tokens, version)
VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (model) DO NOTHING
RETURNING id
"""
SEED_VERSION = """
INSERT INTO prompt_versions (model, version, created_by, config_json, change_description,
                             is_active)
VALUES ($1, 1, 'hsid', $2, 'default prompt', true)
ON CONFLICT (model, version) DO NOTHING
"""
SELECT_ACTIVE = """
SELECT system_prompt, temperature, max_tokens FROM prompt_configs WHERE model = $1
"""
SELECT_ACTIVE_VERSION = "SELECT version FROM prompt_configs WHERE model = $1"
# Evaluation figures (scripts/eval_risk.py) merge into the version's config_json under
# "evaluation", one entry per scorer, so a prompt change and what it did stay together.
RECORD_EVALUATION = """
UPDATE prompt_versions
SET config_json = (config_json::jsonb || jsonb_build_object('evaluation',
        coalesce(config_json::jsonb -> 'evaluation', '{}'::jsonb) || $3::text::jsonb))::text,
    row_version = row_version + 1
WHERE model = $1 AND version = $2
RETURNING version
"""


async def seed_default_prompt(pool: asyncpg.Pool) -> None:
    """Give a fresh database the default analyzer prompt as version 1; idempotent."""
    settings = default_settings()
    config_json = json.dumps({"system_prompt": settings.system_prompt,
                              "temperature": settings.temperature,
                              "max_tokens": settings.max_tokens})
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(SEED_CONFIG, ANALYZER_PROMPT_MODEL, settings.system_prompt,
                               settings.temperature, settings.max_tokens) is not None:
            await conn.execute(SEED_VERSION, ANALYZER_PROMPT_MODEL, config_json)


def default_settings() -> PromptSettings:
    return PromptSettings(DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)


async def active_settings(pool: asyncpg.Pool) -> PromptSettings:
    """The prompt the operator has made active (via the API), else the built-in default."""
    row = await pool.fetchrow(SELECT_ACTIVE, ANALYZER_PROMPT_MODEL)
    if row is None:
        return default_settings()
    return PromptSettings(row["system_prompt"], row["temperature"], row["max_tokens"])


async def record_evaluation(pool: asyncpg.Pool, figures: dict[str, dict]) -> int | None:
    """Store evaluation figures ({scorer: figures}) on the active prompt version; returns
    that version, or None when there is none. Idempotent per scorer: a re-run replaces it."""
    async with pool.acquire() as conn, conn.transaction():
        version = await conn.fetchval(SELECT_ACTIVE_VERSION, ANALYZER_PROMPT_MODEL)
        if version is None:
            return None
        return await conn.fetchval(RECORD_EVALUATION, ANALYZER_PROMPT_MODEL, version,
                                   json.dumps(figures))
