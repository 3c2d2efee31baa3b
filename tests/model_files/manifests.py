"""Manifests for the model tests: analyzer entries whose sha256 and size describe `payload`."""

from __future__ import annotations

import hashlib
from pathlib import Path


def write_manifest(path: Path, url: str, names: tuple[str, ...], payload: bytes) -> Path:
    sha256 = hashlib.sha256(payload).hexdigest()
    tables = [
        f'[[model]]\nname = "{name}"\nrole = "analyzer"\nconfig_key = "analyzer.model"\n'
        f'filename = "{name}.gguf"\nurl = "{url}"\nsha256 = "{sha256}"\n'
        f'size = {len(payload)}\nlicence = "test"\n'
        for name in names
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path
