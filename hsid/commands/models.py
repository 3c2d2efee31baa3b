"""`hsid models list | fetch [NAME ...] [--dest DIR]`: the model files of the manifest."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hsid.core.config import Config


def models_command(config: Config, action: str, names: list[str], dest: Path | None) -> int:
    """List the manifest's files and the configured model paths, or fetch (all or the named
    entries) into `dest` (default <state_dir>/models), verified."""
    from hsid.model_files.fetch import fetch_models, manifest_path
    from hsid.model_files.inventory import list_models

    dest = dest or config.paths.state_dir / "models"
    if action == "list":
        configured = {"detector.model": config.detector.model,
                      "analyzer.model": config.analyzer.model,
                      "entities.model": config.entities.model,
                      "entities.vehicle_model": config.entities.vehicle_model}
        for line in list_models(manifest_path(), dest, configured):
            print(line)
        return 0
    paths = asyncio.run(fetch_models(manifest_path(), dest, names or None, print))
    for path in paths:
        print(f"ready: {path}")
    return 0
