"""Camera layout: which camera a file under the camera root belongs to, and which files count.

People lay camera folders out in many ways (README, "Cameras"). A file's camera comes from,
in this order: `watcher.camera_pattern` (its `camera` group, searched in the file's path under
the root, so it can read a file name in a shared upload folder or a folder of an NVR tree);
else the top-level folder the file sits in, however deep; else, for a file straight in the
root, `watcher.root_camera`. Files hsid does not take are named by a reason and counted.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

from hsid.core.config import WatcherConfig
from hsid.core.metrics import FILES_IGNORED

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

# Where a camera's files come from (CameraSource.kind).
FOLDER = "folder"  # a top-level folder under the camera root
PATTERN = "pattern"  # the `camera` group of watcher.camera_pattern
ROOT = "root"  # a file straight in the camera root: watcher.root_camera

# Reasons a file is not taken, as counted in hsid_files_ignored_total{reason}; the watcher
# adds the refusals of refusal() in registry.py (symlink, outside_camera_root, ...).
NOT_AN_IMAGE = "not_an_image"
TEMPORARY_NAME = "temporary_name"  # matches watcher.temp_patterns: an upload in progress
HIDDEN_FOLDER = "hidden_folder"  # where some FTP servers stage uploads


@dataclass(frozen=True, slots=True)
class CameraSource:
    """Where one camera's files come from: the name its id is made from, and its folder.

    `name` is kept exactly as found (any script) and becomes the camera's display name;
    `folder` becomes cameras.folder_path, whose absence the status monitor reports.
    `own_folder` says whether that folder is this camera's alone (a top-level folder, or the
    folder a pattern read the name from), not the root that many cameras share.
    """

    kind: str
    name: str
    folder: Path
    own_folder: bool

    @property
    def key(self) -> tuple[str, str]:
        """What makes two sources one camera: a folder by its path, a pattern camera by its
        name, wherever its files are (the same camera may upload into several folders)."""
        return (self.kind, self.name if self.kind == PATTERN else str(self.folder))


class ScannedFile(NamedTuple):
    """A file the start-up scan found: its path, and its size and mtime (ns) at the look."""

    path: Path
    size: int
    mtime_ns: int


class CameraLayout:
    """The watcher's reading of the camera root: cameras of files, and files not taken."""

    def __init__(self, root: Path, config: WatcherConfig) -> None:
        self.root = root
        # Validated at config load (the regex compiles and has its `camera` group).
        self._pattern = re.compile(config.camera_pattern) if config.camera_pattern else None
        self._temp_patterns = tuple(pattern.lower() for pattern in config.temp_patterns)
        self._root_camera = config.root_camera

    @property
    def has_pattern(self) -> bool:
        return self._pattern is not None

    def folder_source(self, folder: Path) -> CameraSource:
        """The source of a top-level folder under the root."""
        return CameraSource(FOLDER, folder.name, folder, own_folder=True)

    def source_of(self, path: Path) -> CameraSource:
        """The camera source of a file under the root (see the module docstring)."""
        relative = path.relative_to(self.root)
        if self._pattern is not None:
            match = self._pattern.search(relative.as_posix())
            if match is not None and match["camera"]:
                folder = self._pattern_folder(relative, match.end("camera"))
                return CameraSource(PATTERN, match["camera"], folder, folder != self.root)
        if len(relative.parts) == 1:
            return CameraSource(ROOT, self._root_camera, self.root, own_folder=False)
        return self.folder_source(self.root / relative.parts[0])

    def _pattern_folder(self, relative: Path, group_end: int) -> Path:
        """A pattern camera's folder: the folder its name was read from (`NVR/Camera 01`);
        the root when it was read from the file name, as its files may be anywhere."""
        depth = relative.as_posix()[:group_end].count("/")
        if depth == len(relative.parts) - 1:
            return self.root
        return self.root.joinpath(*relative.parts[: depth + 1])

    def is_temporary(self, name: str) -> bool:
        """Whether a file name is one uploads use while in progress (case-insensitive)."""
        lowered = name.lower()
        return any(fnmatchcase(lowered, pattern) for pattern in self._temp_patterns)

    def ignore_reason(self, path: Path) -> str | None:
        """Why a file under the root is not a candidate image, or None when it is one."""
        *folders, name = path.relative_to(self.root).parts
        if any(part.startswith(".") for part in folders):
            return HIDDEN_FOLDER
        if self.is_temporary(name):
            return TEMPORARY_NAME
        return None if Path(name).suffix.lower() in IMAGE_SUFFIXES else NOT_AN_IMAGE

    def scan(self, folders: Iterable[Path], newer_than: float) -> list[ScannedFile]:
        """Candidate images under `folders` modified after `newer_than`, oldest first, each
        with the size and mtime of that look; the files passed over are counted by reason.
        Hidden folders are not entered. Blocking."""
        found: list[tuple[int, ScannedFile]] = []
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [name for name in dirnames if not name.startswith(".")]
                for name in filenames:
                    path = Path(dirpath, name)
                    with contextlib.suppress(OSError):
                        info = os.stat(path, follow_symlinks=False)
                        if info.st_mtime < newer_than:
                            continue
                        if (reason := self.ignore_reason(path)) is not None:
                            FILES_IGNORED.labels(reason=reason).inc()
                        else:
                            found.append((info.st_mtime_ns,
                                          ScannedFile(path, info.st_size, info.st_mtime_ns)))
        return [file for _, file in sorted(found, key=lambda entry: (entry[0], entry[1].path))]
