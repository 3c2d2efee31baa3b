"""Tests for hsid/cameras/layout.py: the camera of a file, files not taken, the scan."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hsid.cameras.layout import FOLDER, PATTERN, ROOT, CameraLayout, CameraSource
from hsid.core.config import Config
from hsid.core.metrics import REGISTRY


def layout(root: Path, **watcher: object) -> CameraLayout:
    return CameraLayout(root, Config().with_overrides({"watcher": watcher}).watcher)


def ignored(reason: str) -> float:
    return REGISTRY.get_sample_value("hsid_files_ignored_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("gate/snap.jpg", None),
        ("gate/SNAP.JPEG", None),
        ("gate/2025/snap.png", None),
        ("snap.jpg", None),  # straight in the root: the root camera's
        ("gate/notes.txt", "not_an_image"),
        ("gate/clip.mp4", "not_an_image"),
        ("gate/.snap.jpg", "temporary_name"),
        ("gate/snap.jpg.part", "temporary_name"),
        ("gate/snap.jpg.tmp", "temporary_name"),
        ("gate/SNAP.JPG.TMP", "temporary_name"),
        ("gate/snap.jpg.filepart", "temporary_name"),
        ("gate/camera_tmp.jpg", "temporary_name"),
        ("gate/Camera_TMP.JPG", "temporary_name"),
        ("gate/.in.snap.jpg.", "temporary_name"),  # ProFTPD HiddenStores
        ("gate/.upload/snap.jpg", "hidden_folder"),
    ],
)
def test_ignore_reason_with_the_default_temp_patterns(
    camera_root: Path, relative: str, reason: str | None
) -> None:
    assert layout(camera_root).ignore_reason(camera_root / relative) == reason


def test_temp_patterns_replace_the_defaults(camera_root: Path) -> None:
    custom = layout(camera_root, temp_patterns=["*.uploading"])
    assert custom.ignore_reason(camera_root / "gate" / "a.jpg.uploading") == "temporary_name"
    assert custom.ignore_reason(camera_root / "gate" / "a_tmp.jpg") is None


def test_the_top_level_folder_names_the_camera_however_deep_the_file(camera_root: Path) -> None:
    files = layout(camera_root)
    deep = camera_root / "前门" / "2025-12-23" / "10" / "snap.jpg"
    assert files.source_of(deep) == CameraSource(FOLDER, "前门", camera_root / "前门", True)
    assert files.source_of(camera_root / "snap.jpg") == CameraSource(
        ROOT, "unsorted", camera_root, False)
    assert layout(camera_root, root_camera="Inbox").source_of(camera_root / "x.jpg").name == "Inbox"


def test_camera_pattern_names_the_camera_whatever_the_folder(camera_root: Path) -> None:
    files = layout(camera_root, camera_pattern=r"(?:^|/)(?P<camera>cam\d+)_[^/]*$")
    assert files.has_pattern
    shared = files.source_of(camera_root / "uploads" / "2025" / "cam7_0001.jpg")
    assert shared == CameraSource(PATTERN, "cam7", camera_root, False)
    in_root = files.source_of(camera_root / "cam8_0002.jpg")
    assert in_root == CameraSource(PATTERN, "cam8", camera_root, False)
    # Not claimed by the pattern: the folder (or root) rules apply.
    assert files.source_of(camera_root / "uploads" / "other.jpg").kind == FOLDER
    assert files.source_of(camera_root / "other.jpg").kind == ROOT


def test_camera_pattern_reads_an_nvr_folder(camera_root: Path) -> None:
    files = layout(camera_root, camera_pattern=r"^NVR/(?P<camera>[^/]+)/")
    path = camera_root / "NVR" / "Camera 01" / "2025-12-23" / "snap.jpg"
    assert files.source_of(path) == CameraSource(
        PATTERN, "Camera 01", camera_root / "NVR" / "Camera 01", True)


def test_scan_finds_recent_candidates_oldest_first_and_counts_the_rest(
    camera_root: Path
) -> None:
    gate = camera_root / "gate"
    (gate / "2025").mkdir(parents=True)
    (gate / ".hidden").mkdir()
    now = time.time()
    for name, age in [("gate/b.jpg", 10), ("gate/2025/a.png", 20), ("gate/notes.txt", 5),
                      ("gate/.hidden/c.jpg", 5), ("gate/old.jpg", 3 * 3600),
                      ("gate/x.jpg.part", 5), ("root.jpg", 15), ("gate/y_tmp.jpg", 5)]:
        (camera_root / name).write_bytes(b"x")
        os.utime(camera_root / name, (now - age, now - age))
    before = {reason: ignored(reason) for reason in ("not_an_image", "temporary_name")}

    found = layout(camera_root).scan([camera_root], now - 3600)

    assert [file.path for file in found] == [gate / "2025" / "a.png", camera_root / "root.jpg",
                                             gate / "b.jpg"]
    assert ignored("not_an_image") == before["not_an_image"] + 1
    assert ignored("temporary_name") == before["temporary_name"] + 2
