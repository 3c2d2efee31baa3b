"""The analyzer's prompt: seeding the default and reading the active prompt_configs row."""

from __future__ import annotations

import json

import asyncpg

from hsid.constants import ANALYZER_PROMPT_MODEL
from hsid.pipeline.analyzer import DEFAULT_SYSTEM_PROMPT, PromptSettings

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
