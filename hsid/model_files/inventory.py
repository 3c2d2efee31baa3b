"""What model files are present, and what the config points at."""

from __future__ import annotations

from pathlib import Path

from hsid.model_files.fetch import NO_CHECKSUM, PART_SUFFIX, ModelEntry, load_manifest, pin_path


def list_models(manifest_path: Path, dest_dir: Path, configured: dict[str, str]) -> list[str]:
    """Human-readable lines: each manifest file's state in `dest_dir`, then each config key.

    `configured` maps config keys ("detector.model") to their values. Sizes are compared,
    files are not hashed: listing must stay quick with several GB of models present.
    """
    entries = load_manifest(manifest_path)
    lines = [f"Manifest models in {dest_dir}:"]
    for entry in entries:
        lines.append(
            f"  {entry.name:<22} {entry.role:<9} {entry.filename}: {_file_state(entry, dest_dir)}"
        )
    lines.append("Configured:")
    by_filename = {e.filename: e for e in entries}
    for key, value in configured.items():
        lines.append(f"  {key} = {_configured_state(value, by_filename)}")
    return lines


def _file_state(entry: ModelEntry, dest_dir: Path) -> str:
    """Present, partial or missing; for a present file, whether its size is the manifest's."""
    target = dest_dir / entry.filename
    part = target.with_name(target.name + PART_SUFFIX)
    fetch = f"`hsid models fetch {entry.name}`"
    if part.is_file() and not target.is_file():
        of = f" of {_mb(entry.size)}" if entry.size else ""
        return f"partial, {_mb(part.stat().st_size)}{of}; {fetch} resumes it"
    if not target.is_file():
        return f"missing; {fetch} downloads it"
    size = target.stat().st_size
    if entry.size and size != entry.size:
        return f"present, {_mb(size)}, WRONG SIZE: the manifest says {entry.size} bytes"
    checks = ["size matches" if entry.size else "size not in manifest"]
    if not entry.sha256:
        checks.append(f"unverified: {NO_CHECKSUM}")
        if pin_path(target).is_file():
            checks.append("sha256 recorded at first download, `fetch` checks it")
    return f"present, {_mb(size)}, {', '.join(checks)}"


def _configured_state(value: str, by_filename: dict[str, ModelEntry]) -> str:
    if not value:
        return "(not set)"
    path = Path(value)
    known = by_filename.get(path.name)
    source = f", manifest entry {known.name}" if known else ", not from the manifest"
    if path.is_file():
        return f"{value}: exists, {_mb(path.stat().st_size)}{source}"
    return f"{value}: MISSING{source}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
