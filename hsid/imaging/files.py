"""Which stored image files may be read: regular image files inside the state dir or the
camera root, and nothing a link or `..` leads out of them to."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from hsid.core.config import PathsConfig
from hsid.core.errors import NotFound

log = structlog.get_logger(__name__)

# What the watcher takes and the thumbnailer writes; anything else is never served, even
# from inside the roots, and the content type is ours rather than a guess from the name.
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
IMAGE_MEDIA_TYPES = tuple(sorted(set(IMAGE_TYPES.values())))


def _inside(stored: str, roots: Iterable[Path]) -> Path:
    """The resolved path if it is a regular image file under one of the resolved roots.

    resolve() follows every symlink and removes `..`, so a link pointing out of a root, or
    a path climbing out of it, resolves outside and is refused. Relative paths are refused
    too: they would depend on the daemon's working directory.
    """
    path = Path(stored)
    if not path.is_absolute():
        raise NotFound("file not found")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as err:  # missing, a link loop, a NUL byte
        raise NotFound("file not found") from err
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        log.warning("file_outside_roots", path=stored)
        raise NotFound("file not found")
    if resolved.suffix.lower() not in IMAGE_TYPES or not resolved.is_file():
        raise NotFound("file not found")
    return resolved


def roots(paths: PathsConfig) -> tuple[Path, ...]:
    return (paths.state_dir, paths.camera_root)


async def safe_image(stored: str | None, allowed: Iterable[Path]) -> Path:
    """Check a path from the database (never one from a client) off the event loop."""
    if not stored:
        raise NotFound("file not found")
    return await asyncio.to_thread(_inside, stored, tuple(allowed))


def _newest_image(folder: Path, allowed: tuple[Path, ...]) -> Path | None:
    """The most recently modified image directly in `folder`, if `folder` is inside a root."""
    try:
        folder = _inside_dir(folder, allowed)
        with os.scandir(folder) as entries:
            images = [
                (entry.stat().st_mtime, entry.path) for entry in entries
                if entry.is_file(follow_symlinks=False)
                and Path(entry.name).suffix.lower() in IMAGE_TYPES
            ]
    except (OSError, RuntimeError, ValueError, NotFound):
        return None
    return Path(max(images)[1]) if images else None


def _inside_dir(folder: Path, allowed: tuple[Path, ...]) -> Path:
    resolved = folder.resolve(strict=True)
    if not folder.is_absolute() or not any(
        resolved.is_relative_to(root.resolve()) for root in allowed
    ):
        raise NotFound("folder not found")
    return resolved


async def newest_image(folder: str, allowed: Iterable[Path]) -> Path:
    """The newest image file in a camera folder (the snapshot's fall-back), or NotFound."""
    found = await asyncio.to_thread(_newest_image, Path(folder), tuple(allowed))
    if found is None:
        raise NotFound("no image found")
    return found
