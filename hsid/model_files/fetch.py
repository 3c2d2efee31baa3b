"""Real model files: the manifest and resumable, verified downloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from hsid.core.errors import ConfigError, InvalidInput, PermanentError, Unavailable

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]

ROLE_CONFIG_KEYS = {
    "detector": "detector.model",
    "analyzer": "analyzer.model",
    "embedder": "entities.model",  # re-identification of people (and vehicles, by default)
    "vehicle_embedder": "entities.vehicle_model",
}
PART_SUFFIX = ".part"  # an unfinished download; kept across failures so the next run resumes
CHUNK_BYTES = 1 << 20
HASH_READ_BYTES = 8 << 20
PROGRESS_INTERVAL_SECONDS = 0.5  # at most two progress lines a second, however fast the link
# A dropped connection mid-file is common on multi-GB downloads; each retry resumes with Range.
MAX_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 1.0  # multiplied by the attempt number
# No total deadline: an 8 GB file on a slow line takes hours. A stalled socket is what we catch.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
NO_CHECKSUM = "no checksum in manifest"
# Where a manifest entry has no sha256, the first download's hash is recorded beside the file,
# in `sha256sum` format, and later runs hold the file to it (trust on first use): a file that
# changes on disk, or a URL that starts serving other bytes, is then caught.
PIN_SUFFIX = ".sha256"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REQUIRED = {
    "name": str,
    "role": str,
    "config_key": str,
    "filename": str,
    "url": str,
    "sha256": str,
    "size": int,
    "licence": str,
}
_OPTIONAL = {"notes": str}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One downloadable model file; an empty sha256 or a size of 0 means "not known yet"."""

    name: str
    role: str
    config_key: str
    filename: str
    url: str
    sha256: str
    size: int
    licence: str
    notes: str = ""


# --- Manifest --------------------------------------------------------------------------------


def manifest_path() -> Path:
    """The manifest shipped inside the package (a link to the repository's models/)."""
    return Path(str(resources.files("hsid.models").joinpath("manifest.toml")))


def load_manifest(path: Path) -> list[ModelEntry]:
    """Read and validate `path`; raises ConfigError naming the entry and the field at fault."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"model manifest {path}: cannot read it: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"model manifest {path}: not valid TOML: {err}") from err
    tables = data.get("model")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"model manifest {path}: expected one or more [[model]] tables")
    entries = [
        _parse_entry(table, f"model manifest {path}, entry {i + 1}")
        for i, table in enumerate(tables)
    ]
    for attr in ("name", "filename"):
        values = [getattr(e, attr) for e in entries]
        if dupes := sorted({v for v in values if values.count(v) > 1}):
            raise ConfigError(f"model manifest {path}: duplicate {attr} {', '.join(dupes)}")
    return entries


def _parse_entry(table: Any, where: str) -> ModelEntry:
    """Check one [[model]] table strictly, so a typo fails here rather than mid-download."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    if "name" in table and isinstance(table["name"], str):
        where = f"{where} ({table['name']!r})"
    if unknown := sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL)):
        raise ConfigError(f"{where}: unknown field {', '.join(unknown)}")
    for key, kind in (_REQUIRED | _OPTIONAL).items():
        if key not in table:
            if key in _REQUIRED:
                raise ConfigError(f"{where}: missing field {key}")
        elif not isinstance(table[key], kind) or isinstance(table[key], bool):
            raise ConfigError(f"{where}: field {key} must be a {kind.__name__}, got {table[key]!r}")
    entry = ModelEntry(**table)
    if problem := _entry_problem(entry):
        raise ConfigError(f"{where}: field {problem}")
    return entry


def _entry_problem(entry: ModelEntry) -> str | None:
    """The first field whose value is wrong, with why, or None."""
    if not entry.name.strip():
        return "name must not be empty"
    if entry.role not in ROLE_CONFIG_KEYS:
        return f"role must be one of {', '.join(ROLE_CONFIG_KEYS)}, got {entry.role!r}"
    if entry.config_key != ROLE_CONFIG_KEYS[entry.role]:
        return (
            f"config_key must be {ROLE_CONFIG_KEYS[entry.role]!r} for a {entry.role}, "
            f"got {entry.config_key!r}"
        )
    if (
        not entry.filename
        or entry.filename.startswith(".")
        or "/" in entry.filename
        or "\\" in entry.filename
        or entry.filename.endswith(PART_SUFFIX)
    ):
        return f"filename must be a plain file name, got {entry.filename!r}"
    if not entry.url.startswith(("https://", "http://")):
        return f"url must be an http(s) URL, got {entry.url!r}"
    if entry.sha256 and not _SHA256.fullmatch(entry.sha256):
        return f'sha256 must be 64 lowercase hex digits or "", got {entry.sha256!r}'
    if entry.size < 0:
        return f"size must be a byte count >= 0, got {entry.size}"
    if not entry.licence.strip():
        return "licence must not be empty"
    return None


# --- Download --------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The transfer stopped part-way; the .part file is kept and the next attempt resumes."""


@dataclass
class _PartFile:
    """The .part file on disk and the running sha256 of exactly the bytes it holds."""

    path: Path
    size: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)

    def restart(self) -> None:
        self.size = 0
        self.hasher = hashlib.sha256()


@dataclass
class _Meter:
    """Throttled progress lines, so a fast link doesn't flood the terminal."""

    name: str
    total: int
    emit: Progress
    resumed_at: int
    started: float = field(default_factory=time.monotonic)
    last: float = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_INTERVAL_SECONDS:
            return
        self.last = now
        rate = (done - self.resumed_at) / max(now - self.started, 1e-3) / 1e6
        if self.total:
            self.emit(
                f"{self.name}: {100 * done / self.total:5.1f}% "
                f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
            )
        else:
            self.emit(f"{self.name}: {done / 1e6:.1f} MB {rate:.1f} MB/s")


async def fetch_model(
    entry: ModelEntry, dest_dir: Path, session: aiohttp.ClientSession, progress: Progress
) -> Path:
    """Download `entry` into `dest_dir` and return its path, once it is in place.

    Idempotent: a file already present and verified is not fetched again, and an unfinished
    `<filename>.part` is resumed with a Range request. The file only gets its final name
    (atomically) once its size and sha256 match the manifest. Raises PermanentError for a
    checksum mismatch (the download is deleted) or an HTTP error the URL won't recover from,
    Unavailable when the host can't be reached or keeps dropping the connection (the .part
    is kept for the next run).
    """
    target = dest_dir / entry.filename
    if target.exists():
        keep, line = await asyncio.to_thread(_check_present, entry, target)
        progress(line)
        if keep:
            return target
    part = _PartFile(target.with_name(target.name + PART_SUFFIX))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            await _download(entry, part, session, progress)
            break
        except _Interrupted as err:
            log.warning(
                "model_download_interrupted",
                model=entry.name,
                error=str(err),
                bytes=part.size,
                attempt=attempt,
            )
            if attempt == MAX_ATTEMPTS:
                raise Unavailable(
                    f"{entry.name}: download interrupted {MAX_ATTEMPTS} times ({err}); "
                    f"{part.size} bytes kept in {part.path}, run the fetch again to resume"
                ) from err
            progress(f"{entry.name}: connection lost ({err}); resuming, try {attempt + 1}")
            await asyncio.sleep(RETRY_DELAY_SECONDS * attempt)
    return _install(entry, part, target, progress)


def _check_present(entry: ModelEntry, target: Path) -> tuple[bool, str]:
    """Whether a file already at the target name can stay (a wrong one is fetched again),
    with the line that says so. Blocking (it may hash gigabytes): run it in a thread.
    """
    size = target.stat().st_size
    if entry.size and size != entry.size:
        return False, (
            f"{entry.name}: {target} has {size} bytes, the manifest says "
            f"{entry.size}; downloading it again"
        )
    expected, source = expected_sha256(entry, target)
    if not expected:
        return True, f"{entry.name}: warning: {target} is present but NOT verified: {NO_CHECKSUM}"
    if _hash_file(target, size).hexdigest() != expected:
        return False, (
            f"{entry.name}: {target} does not match the sha256 {source}; downloading it again"
        )
    if entry.sha256:
        return True, f"{entry.name}: already present and verified ({target})"
    return True, (
        f"{entry.name}: already present, matches the sha256 {source} ({target}); "
        f"NOT verified: {NO_CHECKSUM}"
    )


def expected_sha256(entry: ModelEntry, target: Path) -> tuple[str, str]:
    """The sha256 `target` must have ("" when none is known) and where that value comes from."""
    if entry.sha256:
        return entry.sha256, "in the manifest"
    pin = pin_path(target)
    try:
        recorded = pin.read_text(encoding="ascii").split(maxsplit=1)[0]
    except (FileNotFoundError, IndexError, UnicodeDecodeError):
        return "", ""
    if not _SHA256.fullmatch(recorded):
        return "", ""
    return recorded, f"recorded at its first download ({pin})"


def pin_path(target: Path) -> Path:
    return target.with_name(target.name + PIN_SUFFIX)


def _reopen_part(entry: ModelEntry, part: _PartFile) -> None:
    """Load what an earlier attempt left in `part`: its size and the hash of those bytes.

    Blocking (it may hash gigabytes): run it in a thread. A .part longer than the manifest's
    size can't be a prefix of the right file, so it is dropped.
    """
    part.size = part.path.stat().st_size if part.path.exists() else 0
    if entry.size and part.size > entry.size:
        part.path.unlink()
        part.size = 0
    part.hasher = _hash_file(part.path, part.size)


async def _download(
    entry: ModelEntry, part: _PartFile, session: aiohttp.ClientSession, progress: Progress
) -> None:
    """One request: continue `part` from where it ends, or start it over."""
    await asyncio.to_thread(_reopen_part, entry, part)
    if entry.size and part.size == entry.size:
        return  # finished earlier but not yet verified: nothing left to transfer
    headers = {"Accept-Encoding": "identity"}  # byte offsets must be offsets into the file
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
        progress(f"{entry.name}: resuming at {part.size / 1e6:.1f} MB")
    try:
        async with session.get(entry.url, headers=headers) as resp:
            total = _accept_response(entry, resp, part, progress)
            await _stream(entry, resp, part, total, progress)
    except aiohttp.ClientConnectorError as err:
        raise Unavailable(
            f"{entry.name}: cannot connect to {err.host}: the machine appears to be offline "
            f"or the host is unreachable ({err.os_error or err}); "
            f"{part.size} bytes kept in {part.path} for the next run to resume"
        ) from err
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as err:
        raise _Interrupted(str(err) or type(err).__name__) from err


def _accept_response(
    entry: ModelEntry, resp: aiohttp.ClientResponse, part: _PartFile, progress: Progress
) -> int:
    """Decide what the response continues; returns the full file size it implies (0: unknown)."""
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != part.size:
            part.path.unlink(missing_ok=True)
            raise _Interrupted("the server resumed at the wrong offset; starting over")
        total = 0 if match[3] == "*" else int(match[3])
    elif resp.status == 200:
        if part.size:
            progress(f"{entry.name}: the server ignored the Range request; starting over")
            part.restart()
        total = resp.content_length or 0
    elif resp.status == 416 or resp.status == 429 or resp.status >= 500:
        if resp.status == 416:  # our .part is not a prefix of what the server has now
            part.path.unlink(missing_ok=True)
        raise _Interrupted(f"HTTP {resp.status} from {resp.url.host}")
    else:
        raise PermanentError(
            f"{entry.name}: {entry.url} answered HTTP {resp.status}; check the url in the manifest"
        )
    if entry.size and total and total != entry.size:
        raise PermanentError(
            f"{entry.name}: the server offers {total} bytes but the manifest "
            f"says {entry.size}; check the url and size in the manifest"
        )
    return total or entry.size


async def _stream(
    entry: ModelEntry, resp: aiohttp.ClientResponse, part: _PartFile, total: int, progress: Progress
) -> None:
    """Append the body to `part`, hashing as it goes.

    Writes and hashing run on the loop: this is the CLI's only task, and a thread hop per
    1 MiB chunk would cost more than the millisecond of work it moved.
    """
    meter = _Meter(entry.name, total, progress, resumed_at=part.size)
    with part.path.open("ab" if part.size else "wb") as fh:
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            fh.write(chunk)
            part.hasher.update(chunk)
            part.size += len(chunk)
            meter.update(part.size)
        fh.flush()
        os.fsync(fh.fileno())  # durable before the rename that makes it official
    meter.update(part.size, final=True)
    if total and part.size < total:
        raise _Interrupted(f"the body ended at {part.size} of {total} bytes")


def _install(entry: ModelEntry, part: _PartFile, target: Path, progress: Progress) -> Path:
    """Give a finished download its final name, but only if it is what the manifest lists
    (or, without a checksum there, what the first download recorded)."""
    actual = part.hasher.hexdigest()
    if entry.size and part.size != entry.size:
        part.path.unlink(missing_ok=True)
        raise PermanentError(
            f"{entry.name}: downloaded {part.size} bytes, the manifest says "
            f"{entry.size}; the download was removed"
        )
    expected, source = expected_sha256(entry, target)
    if expected and actual != expected:
        part.path.unlink(missing_ok=True)
        advice = (
            "" if entry.sha256 else f"; if the source changed on purpose, delete {pin_path(target)}"
        )
        raise PermanentError(
            f"{entry.name}: sha256 mismatch: expected {expected} ({source}), "
            f"got {actual}; the corrupt download was removed{advice}"
        )
    os.replace(part.path, target)
    log.info(
        "model_fetched",
        model=entry.name,
        path=str(target),
        bytes=part.size,
        sha256=actual,
        verified=bool(entry.sha256),
    )
    if entry.sha256:
        progress(f"{entry.name}: verified, saved as {target}")
        return target
    pin_path(target).write_text(f"{actual}  {target.name}\n", encoding="ascii")
    log.warning("model_unverified", model=entry.name, reason=NO_CHECKSUM)
    progress(
        f"{entry.name}: warning: saved as {target} but NOT verified: {NO_CHECKSUM}; "
        f"it has sha256 {actual} and size {part.size}, recorded in {pin_path(target)} so that "
        "later fetches hold the file to it: compare them with the source page"
    )
    return target


def _hash_file(path: Path, length: int) -> Any:
    """sha256 of the first `length` bytes of `path` (blocking; run it in a thread)."""
    hasher = hashlib.sha256()
    if length == 0:
        return hasher
    with path.open("rb") as fh:
        while length > 0 and (block := fh.read(min(HASH_READ_BYTES, length))):
            hasher.update(block)
            length -= len(block)
    return hasher


async def fetch_models(
    manifest_path: Path, dest_dir: Path, names: list[str] | None, progress: Progress
) -> list[Path]:
    """Fetch the named manifest entries (all of them for None) one after another.

    Stops at the first failure, raising its error; files already fetched stay, so running
    it again skips them and resumes the one that failed. Unknown names raise InvalidInput.
    """
    entries = load_manifest(manifest_path)
    if names:
        known = {e.name for e in entries}
        if unknown := [n for n in names if n not in known]:
            raise InvalidInput(
                f"unknown model {', '.join(unknown)}; the manifest has {', '.join(sorted(known))}"
            )
        entries = [e for e in entries if e.name in names]
    await asyncio.to_thread(dest_dir.mkdir, parents=True, exist_ok=True)
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        return [await fetch_model(e, dest_dir, session, progress) for e in entries]
