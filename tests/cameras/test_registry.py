"""Tests for hsid/cameras/registry.py: ids, registration, status rules, refused files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from hsid.cameras.layout import FOLDER, PATTERN, ROOT, CameraSource
from hsid.cameras.registry import (
    CameraStatusMonitor,
    camera_ids,
    folder_view,
    mark_seen,
    normalize_camera_id,
    refusal,
    register_camera,
    set_status_from_watcher,
)


async def camera_row(pool: asyncpg.Pool, camera_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM cameras WHERE id = $1", camera_id)


def folder(path: Path) -> CameraSource:
    """The source of a top-level camera folder, as the watcher's layout makes it."""
    return CameraSource(FOLDER, path.name, path, own_folder=True)


def suffix(name: str, length: int = 6) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


@pytest.mark.parametrize(
    ("folder_name", "camera_id"),
    [
        ("Front Door-2", "front_door_2"),
        ("garage", "garage"),
        ("Hof (Süd) #1", "hof_sud_1"),
        ("back-yard cam", "back_yard_cam"),
        ("Indkørsel", "indkorsel"),
        ("Straße Ærø Łódź", "strasse_aero_lodz"),
        ("Entrée", "entree"),
        ("车库1", "1"),
        ("Ｃａｍ１", "cam1"),  # full-width letters fold to ASCII (NFKD)
    ],
)
def test_camera_id_is_the_ascii_slug_of_the_folder_name(folder_name: str, camera_id: str) -> None:
    assert normalize_camera_id(folder_name) == camera_id


@pytest.mark.parametrize("name", ["前门", "(!)", "---", "Входная дверь"])
def test_name_without_an_ascii_slug_gets_a_hash_id(name: str) -> None:
    assert normalize_camera_id(name) == f"cam-{suffix(name)}"


def test_ids_after_the_slug_add_ever_longer_hash_suffixes() -> None:
    assert camera_ids("门口1") == [
        "1", *(f"1-{suffix('门口1', n)}" for n in (6, 8, 10, 12, 16))]
    # Decomposed Unicode (as macOS clients write names) gives the same ids as composed.
    assert camera_ids("Su\u0308d") == camera_ids("S\u00fcd")
    assert all(len(camera_id) <= 64 for camera_id in camera_ids("x" * 300 + "前"))


async def test_register_camera_inserts_once(db: asyncpg.Pool, camera_root: Path) -> None:
    path = camera_root / "Front Door-2"
    path.mkdir()

    with capture_logs() as logs:
        assert await register_camera(db, folder(path)) == "front_door_2"
        assert await register_camera(db, folder(path)) == "front_door_2"

    row = await camera_row(db, "front_door_2")
    assert row is not None
    assert (row["name"], row["folder_path"]) == ("Front Door-2", str(path))
    assert row["status"] == "online"
    assert row["last_seen_at"] is None
    assert [entry["event"] for entry in logs] == ["camera_registered"]


async def test_folders_whose_slugs_collide_become_two_cameras(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    front, front_dash = camera_root / "Front Door", camera_root / "front-door"
    garage, gate = camera_root / "车库1", camera_root / "门口1"
    first, second = camera_root / "前门", camera_root / "后门"

    with capture_logs() as logs:
        ids = [await register_camera(db, folder(path))
               for path in (front, front_dash, garage, gate, first, second)]

    assert ids == ["front_door", f"front_door-{suffix('front-door')}", "1", f"1-{suffix('门口1')}",
                   f"cam-{suffix('前门')}", f"cam-{suffix('后门')}"]
    rows = await db.fetch("SELECT id, name, folder_path FROM cameras ORDER BY created_at, id")
    assert {(row["name"], row["folder_path"]) for row in rows} == {
        (path.name, str(path)) for path in (front, front_dash, garage, gate, first, second)}
    collided = [entry for entry in logs if entry["ids_taken"]]
    assert [(entry["camera"], entry["ids_taken"]) for entry in collided] == [
        (ids[1], ["front_door"]), (ids[3], ["1"])]


async def test_a_folder_keeps_the_id_it_was_registered_with(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    # Registered by an older hsid (or through the API) under another id: that id stays.
    hof = camera_root / "Hof (Süd) #1"
    await db.execute("INSERT INTO cameras (id, name, folder_path) VALUES ('hof_sd_1', $1, $2)",
                     hof.name, str(hof))
    gate = camera_root / "Einfahrt"
    await db.execute("INSERT INTO cameras (id, name, folder_path) "
                     "VALUES ('gate', 'Gate', $1)", str(gate))

    assert await register_camera(db, folder(hof)) == "hof_sd_1"
    assert await register_camera(db, folder(gate)) == "gate"
    assert await db.fetchval("SELECT count(*) FROM cameras") == 2


async def test_pattern_cameras_are_known_by_name_and_root_camera_by_its_own(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    shared = CameraSource(PATTERN, "Garage", camera_root, own_folder=False)
    nvr = CameraSource(PATTERN, "Camera 01", camera_root / "NVR" / "Camera 01", own_folder=True)
    unsorted = CameraSource(ROOT, "unsorted", camera_root, own_folder=False)

    assert await register_camera(db, shared) == "garage"
    assert await register_camera(db, nvr) == "camera_01"
    assert await register_camera(db, unsorted) == "unsorted"
    # The same pattern name found in another folder is the same camera.
    elsewhere = CameraSource(PATTERN, "Garage", camera_root / "uploads", own_folder=True)
    assert await register_camera(db, elsewhere) == "garage"
    # Renamed through the API: the NVR camera is still found, by its own folder.
    await db.execute("UPDATE cameras SET name = 'Back door' WHERE id = 'camera_01'")
    assert await register_camera(db, nvr) == "camera_01"
    # Several cameras live in the root; the root camera is not taken for any of them.
    assert await register_camera(db, unsorted) == "unsorted"
    assert await db.fetchval("SELECT count(*) FROM cameras") == 3


async def test_mark_seen_sets_last_seen_and_brings_camera_online(
    db: asyncpg.Pool, camera_root: Path
) -> None:
    camera_id = await register_camera(db, folder(camera_root / "gate"))
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
    camera_id = await register_camera(db, folder(camera_root / "gate"))

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
    gate = camera_root / "gate"
    gate.mkdir()
    camera_id = await register_camera(db, folder(gate))
    monitor = CameraStatusMonitor(db, offline_after_minutes=0)
    await monitor.check()
    assert (await camera_row(db, camera_id))["status"] == "online"

    gate.rmdir()
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
