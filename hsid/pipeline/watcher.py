"""Watcher: notices complete images in the camera folders and queues them for detection.

FTP uploads arrive in pieces, so a file is taken only once it is complete: a JPEG's or
PNG's image must have ended (trailing bytes allowed), and size and mtime must have been
stable for the settle time (short for a finished JPEG). An upload that stalls before its end
is taken as it is after `stall_seconds` (the rules are in settle.py): nothing is given up.
Files that arrived while hsid was down are found at start-up.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from watchfiles import Change, awatch

from hsid.cameras.filesystems import watch_mode
from hsid.cameras.layout import ROOT, CameraLayout, CameraSource
from hsid.cameras.registry import (
    CameraStatusMonitor,
    mark_seen,
    normalize_camera_id,
    refusal,
    register_camera,
)
from hsid.core.broker import state_lost
from hsid.core.constants import RECONCILE_CHECK_SECONDS, RECONCILED_PREFIX
from hsid.core.context import StageContext
from hsid.core.duty import run_duty
from hsid.core.errors import InvalidInput, Unavailable
from hsid.core.messages import DetectionItem
from hsid.core.metrics import FILES_IGNORED, IMAGES_DEDUPLICATED, IMAGES_RECEIVED, IMAGES_REJECTED
from hsid.core.queues import Claim
from hsid.core.runtime import pause
from hsid.pipeline.settle import Completeness, Probe, SettleTracker, Verdict, probe_file
from hsid.pipeline.snapshots import Uploads, known_files

if TYPE_CHECKING:
    from hsid.core.queues import ReliableQueue

log = structlog.get_logger(__name__)

CHECK_INTERVAL_SECONDS = 0.1  # pending files are looked at again this often
# With nothing pending the settle loop sleeps until a file is tracked; this is only its
# safety net, so an idle watcher wakes once a minute instead of ten times a second.
IDLE_CHECK_SECONDS = 60.0
STATUS_CHECK_SECONDS = 10.0  # folder-gone and offline rules; sooner for a short offline_after
# watchfiles reports after 50 ms without new changes, or 200 ms into a burst, so a finished
# snapshot is seen within a fraction of a second even while other cameras keep uploading.
WATCH_STEP_MS = 50
WATCH_DEBOUNCE_MS = 200



@dataclass(slots=True)
class ChangeSet:
    """One watchfiles batch, sorted by what each path needs."""

    deleted: list[Path] = field(default_factory=list)
    new_folders: list[Path] = field(default_factory=list)
    candidates: list[Path] = field(default_factory=list)
    folder_gone: bool = False  # a camera folder disappeared


def sort_changes(batch: set[tuple[Change, str]], layout: CameraLayout) -> ChangeSet:
    """Sort a batch of changes under the camera root; blocking (it looks at each path).

    A file not taken is counted by reason when it appears (added), not at each write.
    """
    root = layout.root
    changes = ChangeSet()
    for change, raw in sorted(batch, key=lambda item: item[1]):
        path = Path(raw)
        if not path.is_relative_to(root) or path == root:
            continue
        if change is Change.deleted:
            changes.deleted.append(path)
            camera_folder = root / path.relative_to(root).parts[0]
            changes.folder_gone = changes.folder_gone or not camera_folder.is_dir()
        elif path.is_dir():
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
            if change is Change.added and not hidden:
                changes.new_folders.append(path)
        elif (reason := layout.ignore_reason(path)) is not None:
            log.debug("file_ignored", path=raw, reason=reason)
            if change is Change.added:
                FILES_IGNORED.labels(reason=reason).inc()
        else:
            changes.candidates.append(path)
    return changes


class Watcher:
    """The stage that turns files in camera folders into detection_queue items."""

    def __init__(self, context: StageContext, queue: ReliableQueue) -> None:
        """`queue`: the detection_queue the accepted images go to."""
        paths, config = context.config.paths, context.config.watcher
        pool, keyspace = context.pool, context.keyspace
        self._root = Path(os.path.abspath(paths.camera_root))
        self._keyspace = keyspace
        self._config = config
        self._dedupe_ttl = context.config.dedupe.ttl_seconds
        self._pool = pool
        self._redis = context.redis
        self._queue = queue
        self._stopping = context.stopping
        self._tracker = SettleTracker(config)
        self._tracked = asyncio.Event()  # set when a file starts being tracked
        self._statuses = CameraStatusMonitor(pool, config.offline_after_minutes)
        self._uploads = Uploads(pool, paths.state_dir)
        self._layout = CameraLayout(self._root, config)
        self._cameras: dict[tuple[str, str], str] = {}  # CameraSource.key -> camera id
        self._root_file_warned = False  # one warning per run for files straight in the root
        self._reconciled = keyspace.key(RECONCILED_PREFIX + "watch")

    async def run(self) -> None:
        """Watch until `stopping` is set; pending files are left to the next start-up scan."""
        if not await asyncio.to_thread(self._root.is_dir):
            raise Unavailable(f"camera root {self._root} is not a folder")
        mode = await asyncio.to_thread(watch_mode, self._root, self._config.polling)
        log.info("watcher_started", camera_root=str(self._root), polling=mode.polling,
                 file_system=mode.file_system, reason=mode.reason,
                 **({"poll_interval_seconds": self._config.poll_interval_seconds}
                    if mode.polling else {}))
        # watchfiles sets its stop_event when the watch is cancelled: it gets its own, never
        # the daemon's, or a crash here would look like SIGTERM and end hsid with status 0.
        watch_stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_loop(watch_stop, mode.polling))
            group.create_task(_relay(self._stopping, watch_stop))
            # One turn of the loop lets the watch task set up inotify, so that a file arriving
            # during the start-up scan is seen by one or the other (or both: that is harmless).
            await asyncio.sleep(0)
            await state_lost(self._redis, self._reconciled)  # the scan below rebuilds all
            folders = await self._register_existing()
            await self._track_existing(folders)
            group.create_task(self._settle_loop())
            group.create_task(self._status_loop())
            group.create_task(self._reconcile_loop())
        log.info("watcher_stopped", pending=len(self._tracker))

    # --- file system events -----------------------------------------------------------------

    def _changes(self, stop: asyncio.Event,
                 force_polling: bool) -> AsyncGenerator[set[tuple[Change, str]], None]:
        # force_polling is always given: watcher.polling already took WATCHFILES_FORCE_POLLING
        # in (config.py), and "auto" was decided by watch_mode.
        return awatch(
            self._root, watch_filter=None, debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS,
            stop_event=stop, recursive=True, force_polling=force_polling,
            poll_delay_ms=round(self._config.poll_interval_seconds * 1000),
        )

    async def _watch_loop(self, stop: asyncio.Event, polling: bool) -> None:
        changes = self._changes(stop, force_polling=polling)
        try:
            batch = await anext(changes, None)
        except OSError as err:  # no inotify here, or its watch limit is reached
            if isinstance(err, FileNotFoundError) or polling:
                raise
            log.warning("watcher_polling_fallback", error=str(err))
            changes = self._changes(stop, force_polling=True)
            batch = await anext(changes, None)
        while batch is not None:
            await self._on_changes(batch)
            batch = await anext(changes, None)

    async def _on_changes(self, batch: set[tuple[Change, str]]) -> None:
        now = time.monotonic()
        changes = await asyncio.to_thread(sort_changes, batch, self._layout)
        for path in changes.deleted:
            self._forget_pending(path)
        for folder in changes.new_folders:
            # Files may land in a new folder before its inotify watch exists: scan it.
            if folder.parent == self._root:
                await self._register_folder(folder)
            await self._track_existing([folder])
        for path in changes.candidates:
            self._tracker.track(path, now)
            self._tracked.set()
        if changes.folder_gone:
            await self._statuses.check()

    # --- camera folders -----------------------------------------------------------------------

    async def _register_existing(self) -> list[Path]:
        """Register the camera folders already there; returns where the start-up scan looks:
        the whole root, whose files may sit in it or be claimed by the camera pattern, and
        the symlinked folders the walk does not enter, whose files are refused by name."""
        folders = await asyncio.to_thread(
            lambda: sorted(
                (entry, entry.is_symlink()) for entry in self._root.iterdir()
                if entry.is_dir() and not entry.name.startswith(".")
            )
        )
        for folder, _ in folders:
            await self._register_folder(folder)
        return [self._root, *(folder for folder, linked in folders if linked)]

    async def _register_folder(self, folder: Path) -> str | None:
        """Register a top-level folder as a camera as soon as it exists, so its status is
        watched before its first image; None for a refused folder. With a camera pattern
        a folder may hold only pattern cameras (`NVR`): it becomes a camera at its first
        file the pattern leaves, if any."""
        if self._layout.has_pattern:
            return None
        return await self._register(self._layout.folder_source(folder))

    async def _register(self, source: CameraSource) -> str | None:
        """The camera id of a source, registering it when new; None for a refused folder."""
        if (camera_id := self._cameras.get(source.key)) is not None:
            return camera_id
        if source.own_folder and await asyncio.to_thread(source.folder.is_symlink):
            log.warning("camera_folder_refused", folder=str(source.folder), reason="symlink")
            return None
        try:
            camera_id = await register_camera(self._pool, source)
        except InvalidInput as err:
            log.warning("camera_folder_refused", folder=str(source.folder), reason=str(err))
            return None
        self._cameras[source.key] = camera_id
        return camera_id

    async def _resolve(self, path: Path) -> tuple[CameraSource, str | None, str]:
        """A complete file's camera source and id, or no id and why it is refused."""
        source = self._layout.source_of(path)
        if reason := await asyncio.to_thread(refusal, path, self._root):
            return source, None, reason
        if (camera_id := await self._register(source)) is None:
            return source, None, "camera_folder_refused"
        if source.kind == ROOT and not self._root_file_warned:
            self._root_file_warned = True
            log.warning("image_in_camera_root", path=str(path), camera=camera_id,
                        hint="give each camera a folder, or set watcher.camera_pattern; "
                             "further such files are taken without this warning")
        return source, camera_id, ""

    async def _track_existing(self, folders: list[Path]) -> None:
        """Track images in `folders` that were not dealt with yet: a file still as it was
        when its snapshot was recorded (processed or dead-lettered) is left alone."""
        cutoff = time.time() - self._config.startup_lookback_hours * 3600
        found = await asyncio.to_thread(self._layout.scan, folders, cutoff)
        known = await known_files(self._pool, [file.path for file in found])
        now = time.monotonic()
        fresh = [file.path for file in found
                 if (str(file.path), file.size, file.mtime_ns) not in known]
        for path in fresh:
            self._tracker.track(path, now)
            self._tracked.set()
        log.info("existing_images_scanned", folders=len(folders), found=len(found),
                 already_done=len(found) - len(fresh))

    # --- completion -------------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        while not self._stopping.is_set():
            await self._check_pending()
            if self._tracker.pending():
                await self._pause(CHECK_INTERVAL_SECONDS)
            else:
                await self._pause(IDLE_CHECK_SECONDS, wake=self._tracked)

    async def _check_pending(self) -> None:
        paths = self._tracker.pending()
        if not paths:
            return
        probes = await asyncio.to_thread(lambda: [probe_file(path) for path in paths])
        now = time.monotonic()
        for path, probe in zip(paths, probes, strict=True):
            if probe is None:
                self._forget_pending(path)
                continue
            verdict = self._tracker.check(path, probe, now)
            if verdict is Verdict.READY:
                if probe.completeness is Completeness.INCOMPLETE:
                    log.warning("image_stalled", path=str(path), size=probe.size,
                                stalled_seconds=self._config.stall_seconds,
                                action="taken as it is")
                await self._take(path, probe)
            if self._stopping.is_set():
                return

    async def _take(self, path: Path, probe: Probe) -> None:
        """Refuse, dedupe, record and queue one complete image."""
        source, camera_id, reason = await self._resolve(path)
        folder = source.folder
        if camera_id is None:
            _reject(path, folder, reason)
            return
        # Recorded before the claim: a database outage here leaves no claim behind that
        # would make the file a "duplicate" when it is scanned again.
        camera_id = await self._mark_seen(source, camera_id)
        try:
            upload = await self._uploads.prepare(path, camera_id)
        except FileNotFoundError:  # said, not dropped: a camera's own cleanup may be too eager
            _reject(path, folder, "gone: deleted before it could be read")
            return
        except OSError as err:
            _reject(path, folder, f"unreadable: {err.strerror}")
            return
        if upload is None:
            self._duplicate(path, probe, camera_id, "processed before")
            return
        item = DetectionItem(camera_id=camera_id, file_path=str(path),
                             timestamp=datetime.now(UTC), **upload.item_fields())
        # Empty files all share one hash; each is dead-lettered under its own name.
        claim = (Claim(self._keyspace.dedupe(upload.sha256), str(path), self._dedupe_ttl)
                 if upload.size else None)
        pushed, holder = await self._push(item, claim)
        if holder is not None:
            self._duplicate(path, probe, camera_id, holder)
        elif pushed:
            self._tracker.remember_taken(path, probe)
            IMAGES_RECEIVED.labels(camera=camera_id).inc()
            log.info("image_queued", camera=camera_id, path=str(path), size=upload.size,
                     sha256=upload.sha256, copy=upload.image_path != str(path))

    def _forget_pending(self, path: Path) -> None:
        """A file removed (or renamed away) before it was complete: said, and counted, since
        an upload aborted by the camera or the FTP server is one; a file already taken goes
        in silence."""
        if self._tracker.discard(path):
            log.info("image_gone", path=str(path), reason="removed before it was complete")
            FILES_IGNORED.labels(reason="gone").inc()

    def _duplicate(self, path: Path, probe: Probe, camera_id: str, original: str) -> None:
        self._tracker.remember_taken(path, probe)
        IMAGES_DEDUPLICATED.labels(camera=camera_id).inc()
        log.info("image_duplicate", path=str(path), original=original)

    async def _mark_seen(self, source: CameraSource, camera_id: str) -> str:
        """Mark the camera seen; returns its id, which is new when the row had gone."""
        if not await mark_seen(self._pool, camera_id):
            # The row was deleted (through the API) while its folder still receives images:
            # register it again, as for any new folder, so the detections have their camera
            # (under the id of a camera registered for the folder meanwhile, if there is one).
            self._cameras.pop(source.key, None)
            camera_id = await self._register(source) or camera_id
            await mark_seen(self._pool, camera_id)
        self._statuses.image_seen(camera_id)
        return camera_id

    async def _push(self, item: DetectionItem,
                    claim: Claim | None) -> tuple[bool, str | None]:
        """Queue the image with its dedupe claim unless hsid stops first (the queue may be
        full): (pushed, None), or (False, holder) for a duplicate, or (False, None) when
        abandoned; an abandoned push took no claim, so the next start-up scan takes it."""
        push = asyncio.create_task(self._queue.push(item, claim))
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait((push, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            push.cancel()
        if push not in done:
            log.info("image_push_abandoned", path=item.file_path, reason="stopping")
            return False, None
        holder = push.result()
        return holder is None, holder

    # --- camera status ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        """The folder-gone and no-upload rules, checked sooner when offline_after is short."""
        interval = STATUS_CHECK_SECONDS
        if self._config.offline_after_minutes:
            quarter = self._config.offline_after_minutes * 60 / 4
            interval = min(interval, max(CHECK_INTERVAL_SECONDS, quarter))
        await run_duty("camera_status", self._check_statuses, interval, self._stopping)

    async def _check_statuses(self) -> None:
        await self._statuses.check()

    # --- Redis restarted empty ----------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        """When Redis comes back empty, the queued images and their dedupe claims are gone:
        the folders are scanned again as at start-up, so what was accepted is queued again.
        (An outage that crashed this stage is followed by that scan anyway, at its restart.)"""
        await run_duty("watch_reconcile", self._reconcile, RECONCILE_CHECK_SECONDS,
                       self._stopping)

    async def _reconcile(self) -> None:
        if await state_lost(self._redis, self._reconciled):
            log.warning("redis_state_lost", duty="watch", action="rescanning folders")
            self._tracker.forget_taken()
            await self._track_existing([self._root])

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep up to `seconds`, or until `wake` is set; True (at once) when the daemon is
        stopping."""
        return await pause(self._stopping, seconds, wake)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _reject(path: Path, folder: Path, reason: str) -> None:
    log.warning("image_rejected", path=str(path), reason=reason)
    IMAGES_REJECTED.labels(camera=normalize_camera_id(folder.name)).inc()
    # "unreadable: <strerror>" is counted as "unreadable": a label takes few values.
    FILES_IGNORED.labels(reason=reason.partition(":")[0]).inc()
