"""Tests for hsid/cameras/filesystems.py: reading the camera root's file system, watch mode."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hsid.cameras import filesystems
from hsid.cameras.filesystems import describe_file_system, statfs_type, watch_mode


def test_statfs_reads_what_stat_reads(tmp_path: Path) -> None:
    if (stat := shutil.which("stat")) is None:
        pytest.skip("no stat command to compare with")
    shown = subprocess.run([stat, "-f", "-c", "%t", str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert statfs_type(tmp_path) == int(shown, 16)


def test_an_overlay_is_polled(overlay_root: Path) -> None:
    assert describe_file_system(overlay_root) == ("overlayfs", True)
    mode = watch_mode(overlay_root, "auto")
    assert mode.polling is True
    assert "overlayfs" in mode.reason


# A network share cannot be mounted in a test: statfs, the edge with the kernel, is faked.
@pytest.mark.parametrize(
    ("magic", "name"),
    [(0x6969, "nfs"), (0xFF534D42, "cifs"), (0xFE534D42, "smb2"), (0x517B, "smb"),
     (0x65735546, "fuse"), (0x794C7630, "overlayfs"), (0x01021997, "9p")],
)
def test_auto_polls_on_network_and_overlay_file_systems(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, magic: int, name: str
) -> None:
    monkeypatch.setattr(filesystems, "statfs_type", lambda path: magic)
    mode = watch_mode(tmp_path, "auto")
    assert (mode.polling, mode.file_system) == (True, name)
    assert watch_mode(tmp_path, False).polling is False  # an explicit setting wins


@pytest.mark.parametrize(("magic", "name"), [(0xEF53, "ext2/3/4"), (0x01021994, "tmpfs"),
                                             (0x58465342, "xfs"), (0x12345678, "0x12345678")])
def test_auto_uses_inotify_on_local_file_systems(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, magic: int, name: str
) -> None:
    monkeypatch.setattr(filesystems, "statfs_type", lambda path: magic)
    mode = watch_mode(tmp_path, "auto")
    assert (mode.polling, mode.file_system) == (False, name)
    assert watch_mode(tmp_path, True).polling is True
    assert watch_mode(tmp_path, True).reason == "watcher.polling = true"


def test_a_root_that_cannot_be_read_is_watched_with_inotify(tmp_path: Path) -> None:
    mode = watch_mode(tmp_path / "missing", "auto")
    assert mode.polling is False
    assert mode.file_system.startswith("unknown (")
