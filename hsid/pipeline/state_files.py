"""Files hsid writes under its state dir (thumbnails, snapshot copies): atomically, and
riding out a full disk."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import structlog

from hsid.core import metrics

log = structlog.get_logger(__name__)

# Out of space or over quota: the state dir will take files again once the user makes room,
# so what needed the file (a detection, a snapshot) goes on without it rather than waiting.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` (temporary file, then rename), creating folders.

    A reader never sees half a file, a failed write leaves nothing behind, and writing
    again just replaces the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class StateFileWriter:
    """Writes one kind of state file (`kind`: "thumbnails", "snapshot_copies").

    `write` returns False instead of raising when the disk is full (DISK_FULL_ERRNOS), so
    the caller goes on without the file. Each outage is logged once at error
    (`<kind>_unwritable`) and its end at info (`<kind>_writable_again`, on the first write
    that succeeds); every file not written is counted (metrics.STATE_FILES_NOT_WRITTEN).
    Other OSErrors propagate. Blocking; used from one thread at a time.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._unwritable = False

    def write(self, path: Path, data: bytes) -> bool:
        """Write `data` to `path` like write_atomically; False when the disk was full."""
        try:
            write_atomically(path, data)
        except OSError as err:
            if err.errno not in DISK_FULL_ERRNOS:
                raise
            metrics.STATE_FILES_NOT_WRITTEN.labels(self._kind).inc()
            if not self._unwritable:
                self._unwritable = True
                log.error(f"{self._kind}_unwritable", path=str(path), error=str(err))
            return False
        if self._unwritable:
            self._unwritable = False
            log.info(f"{self._kind}_writable_again", path=str(path))
        return True
