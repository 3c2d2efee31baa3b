"""Rows for tests, inserted the way the pipeline writes them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg


async def camera(pool: asyncpg.Pool, camera_id: str = "front_door", folder: str = "",
                 name: str = "") -> str:
    await pool.execute(
        "INSERT INTO cameras (id, name, folder_path) VALUES ($1, $2, $3)",
        camera_id, name or camera_id.replace("_", " ").title(),
        folder or f"/srv/cameras/{camera_id}")
    return camera_id


async def detection(pool: asyncpg.Pool, camera_id: str = "front_door", *,
                    file_path: str = "/srv/cameras/front_door/a.jpg",
                    thumbnail_path: str | None = None, object_type: str = "person",
                    confidence: float = 0.9, detected_at: datetime | None = None) -> int:
    return await pool.fetchval(
        "INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, "
        "confidence, bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path) "
        "VALUES ($1, $2, 'image/jpeg', $3, $4, $5, 10, 20, 30, 40, $6) RETURNING id",
        camera_id, file_path, detected_at or datetime.now(UTC), object_type, confidence,
        thumbnail_path)


async def event(pool: asyncpg.Pool, camera_id: str = "front_door", *,
                detection_ids: list[int] | None = None, risk_score: int = 50,
                risk_level: str = "medium", summary: str = "Person at the door",
                started_at: datetime | None = None, reviewed: bool = False,
                is_fast_path: bool = False) -> int:
    started = started_at or datetime.now(UTC)
    return await pool.fetchval(
        "INSERT INTO events (batch_id, camera_id, started_at, ended_at, risk_score, risk_level, "
        "summary, reasoning, detection_ids, reviewed, is_fast_path) "
        "VALUES ($1, $2, $3, $3, $4, $5, $6, 'because', $7, $8, $9) RETURNING id",
        uuid.uuid4().hex, camera_id, started, risk_score, risk_level, summary,
        json.dumps(detection_ids or []), reviewed, is_fast_path)


async def alert_rule(pool: asyncpg.Pool, name: str = "night person") -> uuid.UUID:
    return await pool.fetchval(
        "INSERT INTO alert_rules (name, severity, risk_threshold, object_types) "
        "VALUES ($1, 'high', 60, $2) RETURNING id", name, ["person"])


async def alert(pool: asyncpg.Pool, event_id: int, rule_id: uuid.UUID | None = None, *,
                status: str = "pending", severity: str = "high") -> uuid.UUID:
    return await pool.fetchval(
        "INSERT INTO alerts (event_id, rule_id, severity, status, dedup_key, channels, metadata) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        event_id, rule_id, severity, status, f"front_door:{rule_id}", ["log"], {"k": 1})


async def entity(pool: asyncpg.Pool, entity_type: str = "person",
                 trust_status: str = "unknown") -> uuid.UUID:
    return await pool.fetchval(
        "INSERT INTO entities (entity_type, trust_status, embedding_vector, entity_metadata) "
        "VALUES ($1, $2, $3, $4) RETURNING id",
        entity_type, trust_status, [0.1, 0.2], {"clothing": "red"})


async def scene_change(pool: asyncpg.Pool, camera_id: str = "front_door", *,
                       change_type: str = "obstruction", resolved: bool = False) -> int:
    return await pool.fetchval(
        "INSERT INTO scene_changes (camera_id, change_type, severity, resolved_at, details) "
        "VALUES ($1, $2, 'high', $3, $4) RETURNING id",
        camera_id, change_type, datetime.now(UTC) if resolved else None, {"score": 0.8})


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(sql, *args)]
