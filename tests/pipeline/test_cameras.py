"""Tests for hsid/pipeline/cameras.py: ids, registration, status rules, candidate files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from hsid.errors import InvalidInput
from hsid.pipeline.cameras import (
    CameraStatusMonitor,
    folder_view,
    ignore_reason,
    mark_seen,
    normalize_camera_id,
    refusal,
    register_camera,
    scan_images,
    set_status_from_watcher,
)


async def camera_row(pool: asyncpg.Pool, camera_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM cameras WHERE id = $1", camera_id)


@pytest.mark.parametrize(
    ("folder_name", "camera_id"),
    [
        ("Front Door-2", "front_door_2"),
        ("garage", "garage"),
        ("Hof (Süd) #1", "hof_sd_1"),
        ("back-yard cam", "back_yard_cam"),
    ],
)
def test_camera_id_is_the_normalised_folder_name(folder_name: str, camera_id: str) -> None:
    assert normalize_camera_id(folder_name) == camera_id


def test_folder_name_without_usable_characters_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="no usable id"):
        normalize_camera_id("(!)")


async def test_register_camera_inserts_once(db: asyncpg.Pool, camera_root: Path) -> None:
    folder = camera_root / "Front Door-2"
    folder.mkdir()

    with capture_logs() as logs:
        assert await register_camera(db, folder) == "front_door_2"
        assert await register_camera(db, folder) == "front_door_2"

    row = await camera_row(db, "front_door_2")
    assert row is not None
    assert (row["name"], row["folder_path"]) == ("Front Door-2", str(folder))
    assert row["status"] == "online"
    assert row["last_seen_at"] is None
    assert [entry["event"] for entry in logs] == ["camera_registered"]


async def test_second_folder_with_the_same_id_shares_the_camera(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    await register_camera(db, camera_root / "Front Door")

    with capture_logs() as logs:
        assert await register_camera(db, camera_root / "front-door") == "front_door"

    assert (await camera_row(db, "front_door"))["folder_path"] == str(camera_root / "Front Door")
    assert logs[0]["event"] == "camera_folder_shared"
    assert logs[0]["log_level"] == "warning"


async def test_mark_seen_sets_last_seen_and_brings_camera_online(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    camera_id = await register_camera(db, camera_root / "gate")
    await db.execute("UPDATE cameras SET status = 'offline' WHERE id = $1", camera_id)

    with capture_logs() as logs:
        assert await mark_seen(db, camera_id) is True

    row = await camera_row(db, camera_id)
    assert row["status"] == "online"
    assert row["last_seen_at"] is not None
    assert logs == [
        {
            "event": "camera_status_changed", "camera": camera_id, "old_status": "offline",
            "status": "online", "reason": "image_received", "log_level": "info",
        }
    ]
    with capture_logs() as logs:
        assert await mark_seen(db, camera_id) is True
    assert logs == []  # already online: no change to report


async def test_mark_seen_of_unknown_camera_says_so(db: asyncpg.Pool) -> None:
    assert await mark_seen(db, "nobody") is False


async def test_status_from_watcher_is_logged_only_when_it_changes(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    camera_id = await register_camera(db, camera_root / "gate")

    with capture_logs() as logs:
        assert await set_status_from_watcher(db, camera_id, "error", "folder_missing") is True
        assert await set_status_from_watcher(db, camera_id, "error", "folder_missing") is False

    assert (await camera_row(db, camera_id))["status"] == "error"
    assert [(entry["event"], entry["old_status"], entry["status"]) for entry in logs] == [
        ("camera_status_changed", "online", "error")
    ]


def test_folder_view_rules(camera_root: Path) -> None:
    folder = camera_root / "gate"
    assert folder_view(folder, 0.0, 0.0) == ("error", "folder_missing")
    folder.mkdir()
    assert folder_view(folder, 10_000.0, 0.0) == ("online", "folder_ok")  # 0: never offline
    assert folder_view(folder, 59.0, 60.0) == ("online", "folder_ok")
    assert folder_view(folder, 60.0, 60.0) == ("offline", "no_upload")


async def test_monitor_writes_only_when_its_view_changes(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    folder = camera_root / "gate"
    folder.mkdir()
    camera_id = await register_camera(db, folder)
    monitor = CameraStatusMonitor(db, offline_after_minutes=0)
    await monitor.check()
    assert (await camera_row(db, camera_id))["status"] == "online"

    folder.rmdir()
    await monitor.check()
    assert (await camera_row(db, camera_id))["status"] == "error"

    # Set by hand (the API): stands, because the watcher sees nothing new.
    await db.execute("UPDATE cameras SET status = 'online' WHERE id = $1", camera_id)
    await monitor.check()
    assert (await camera_row(db, camera_id))["status"] == "online"

    # An image arrived, then the folder is still gone: that is news again.
    monitor.image_seen(camera_id)
    await monitor.check()
    assert (await camera_row(db, camera_id))["status"] == "error"


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("gate/snap.jpg", None),
        ("gate/SNAP.JPEG", None),
        ("gate/2025/snap.png", None),
        ("snap.jpg", "not_in_camera_folder"),
        ("gate/notes.txt", "not_an_image"),
        ("gate/clip.mp4", "not_an_image"),
        ("gate/.snap.jpg", "temporary_name"),
        ("gate/snap.jpg.part", "temporary_name"),
        ("gate/snap.jpg.tmp", "temporary_name"),
        ("gate/snap.jpg.filepart", "temporary_name"),
        ("gate/.upload/snap.jpg", "temporary_name"),
    ],
)
def test_ignore_reason(camera_root: Path, relative: str, reason: str | None) -> None:
    assert ignore_reason(camera_root / relative, camera_root) == reason


def test_refusal_of_symlinks_and_escapes(camera_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    gate = camera_root / "gate"
    gate.mkdir()
    (gate / "real.jpg").write_bytes(b"x")
    (gate / "link.jpg").symlink_to(gate / "real.jpg")
    (gate / "sub").symlink_to(outside)
    (camera_root / "evil").symlink_to(outside)
    (camera_root / "alias").symlink_to(gate)

    assert refusal(gate / "real.jpg", camera_root) is None
    assert refusal(gate / "link.jpg", camera_root) == "symlink"
    assert refusal(gate / "sub" / "x.jpg", camera_root) == "outside_camera_root"
    assert refusal(camera_root / "evil" / "x.jpg", camera_root) == "outside_camera_root"
    assert refusal(camera_root / "alias" / "real.jpg", camera_root) == "symlinked_camera_folder"


def test_scan_finds_recent_candidates_oldest_first(camera_root: Path) -> None:
    gate = camera_root / "gate"
    (gate / "2025").mkdir(parents=True)
    (gate / ".hidden").mkdir()
    now = time.time()
    for name, age in [("b.jpg", 10), ("2025/a.png", 20), ("notes.txt", 5), (".hidden/c.jpg", 5),
                      ("old.jpg", 3 * 3600), ("x.jpg.part", 5)]:
        (gate / name).write_bytes(b"x")
        os.utime(gate / name, (now - age, now - age))

    found = scan_images([gate], camera_root, now - 3600)

    assert found == [gate / "2025" / "a.png", gate / "b.jpg"]
