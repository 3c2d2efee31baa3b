"""`hsid run [--stages ...]`: the daemon, all stages or the named groups of them."""

from __future__ import annotations

import argparse
import asyncio

from hsid.core.config import Config, SystemdEnvironment
from hsid.daemon.app import run_daemon
from hsid.daemon.stages import ALL_STAGE_GROUPS


def parse_stages(value: str) -> frozenset[str]:
    """--stages: a comma-separated subset of the stage groups."""
    names = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = names - set(ALL_STAGE_GROUPS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose from {', '.join(ALL_STAGE_GROUPS)}"
        )
    return names


def run_command(config: Config, stages: frozenset[str], systemd: SystemdEnvironment) -> int:
    """Run the daemon until SIGTERM; its exit status."""
    return asyncio.run(run_daemon(config, stages, systemd))
