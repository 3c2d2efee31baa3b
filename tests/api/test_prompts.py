"""Prompt configs: versions, optimistic locking (409), rollback as a new version."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from aiohttp.test_utils import TestClient

from hsid.api.prompts import MODELS

URL = "/api/prompts/nemotron"


async def put(client: TestClient, text: str, version: int, **extra: object) -> tuple[int, dict]:
    response = await client.put(URL, json={"system_prompt": text, "version": version, **extra})
    return response.status, await response.json()


async def test_models_come_from_the_schema() -> None:
    assert "nemotron" in MODELS and "florence2" in MODELS


async def test_put_versions_and_optimistic_lock(api_client: TestClient,
                                                db: asyncpg.Pool) -> None:
    assert (await api_client.get(URL)).status == 404
    status, first = await put(api_client, "Be careful.", 0, temperature=0.2,
                              change_description="first")
    assert status == 200 and first["version"] == 1 and first["temperature"] == 0.2
    assert first["max_tokens"] == 2048
    status, second = await put(api_client, "Be very careful.", 1, max_tokens=512)
    assert status == 200 and second["version"] == 2

    status, stale = await put(api_client, "Lost update", 1)
    assert status == 409 and stale["error"]["code"] == "conflict"
    current = await (await api_client.get(URL)).json()
    assert current["system_prompt"] == "Be very careful." and current["version"] == 2

    rows = await db.fetch("SELECT version, is_active, config_json, change_description "
                          "FROM prompt_versions ORDER BY version")
    assert [(r["version"], r["is_active"]) for r in rows] == [(1, False), (2, True)]
    assert json.loads(rows[1]["config_json"]) == {
        "system_prompt": "Be very careful.", "temperature": 0.7, "max_tokens": 512}
    assert rows[0]["change_description"] == "first"


async def test_concurrent_puts_of_one_version_let_one_win(api_client: TestClient) -> None:
    await put(api_client, "base", 0)
    results = await asyncio.gather(*(put(api_client, f"edit {i}", 1) for i in range(5)))
    assert sorted(status for status, _ in results) == [200, 409, 409, 409, 409]


async def test_rollback_restores_the_old_text_as_a_new_version(api_client: TestClient) -> None:
    await put(api_client, "Original text.", 0, temperature=0.1)
    await put(api_client, "Bad edit.", 1, temperature=1.9)
    response = await api_client.post(f"{URL}/rollback/1")
    assert response.status == 200
    restored = await response.json()
    assert restored["system_prompt"] == "Original text." and restored["temperature"] == 0.1
    assert restored["version"] == 3
    versions = await (await api_client.get(f"{URL}/versions?limit=2")).json()
    assert versions["count"] == 3
    assert [v["version"] for v in versions["items"]] == [3, 2]
    assert versions["items"][0]["is_active"] and not versions["items"][1]["is_active"]
    assert versions["items"][0]["change_description"] == "rollback to version 1"
    assert versions["items"][0]["config"]["system_prompt"] == "Original text."
    assert (await api_client.post(f"{URL}/rollback/9")).status == 404
    status, _ = await put(api_client, "after rollback", 3)
    assert status == 200


async def test_prompt_bodies_are_validated(api_client: TestClient) -> None:
    for extra, field in (({"temperature": 2.5}, "temperature"),
                         ({"max_tokens": 99}, "max_tokens"),
                         ({"max_tokens": 8193}, "max_tokens"),
                         ({"version": -1}, "version"),
                         ({"model": "x"}, "model")):
        response = await api_client.put(URL, json={"system_prompt": "t", "version": 0, **extra})
        assert response.status == 422
        assert (await response.json())["error"]["field"] == field
    missing = await api_client.put(URL, json={"system_prompt": "no version"})
    assert missing.status == 422
    unknown = await api_client.get("/api/prompts/gpt/versions")
    assert unknown.status == 400


async def test_a_measured_version_rolls_back_without_its_figures(
    api_client: TestClient, db: asyncpg.Pool,
) -> None:
    from hsid.analysis.prompts import record_evaluation

    await put(api_client, "Measured text.", 0)
    assert await record_evaluation(db, {"nemo.gguf": {"exact": 0.7}}) == 1
    await put(api_client, "Unmeasured edit.", 1)
    versions = await (await api_client.get(f"{URL}/versions")).json()
    assert versions["items"][1]["config"]["evaluation"] == {"nemo.gguf": {"exact": 0.7}}
    restored = await (await api_client.post(f"{URL}/rollback/1")).json()
    assert restored["system_prompt"] == "Measured text." and restored["version"] == 3
    config = json.loads(await db.fetchval(
        "SELECT config_json FROM prompt_versions WHERE version = 3"))
    assert "evaluation" not in config
