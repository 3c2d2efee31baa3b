"""The `hsid` command: run | init-db | check, and the operator tools beside them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from hsid.commands.alerts import ALERTS_ACTIONS
from hsid.commands.dlq import DLQ_ACTIONS
from hsid.commands.run import parse_stages
from hsid.core.config import load_config, systemd_environment
from hsid.core.errors import ConfigError, HsidError
from hsid.core.logging import configure_logging
from hsid.daemon.stages import ALL_STAGE_GROUPS
from hsid.embedded import with_embedded_addresses

log = structlog.get_logger(__name__)

# Commands that reach the stores without starting them: an embedded server (empty url) is
# reached at the address the daemon's embedded server uses.
EMBEDDED_ADDRESSES = ("init-db", "dlq", "cleanup")


def _global_options(sub_level: bool) -> argparse.ArgumentParser:
    """The options every command takes, before the command (`hsid --config X run`) or after
    it (`hsid run --config X`). The copy after it defaults to SUPPRESS, so leaving it out
    there keeps what was given before the command (given in both places, the later wins)."""
    options = argparse.ArgumentParser(add_help=False)
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if sub_level else {}
    options.add_argument("--config", type=Path, **default,
                         help="config file (default /etc/hsid/config.toml)")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsid", description=__doc__,
                                     parents=[_global_options(sub_level=False)])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, parents=[_global_options(sub_level=True)])

    run = command("run", "run the daemon")
    run.add_argument("--stages", type=parse_stages, default=frozenset(ALL_STAGE_GROUPS),
                     help=f"comma-separated subset of {','.join(ALL_STAGE_GROUPS)} (default all)")
    command("init-db", "create or upgrade the configured database's schema (migrations, "
                       "then schema.sql) and say what was applied")
    command("check", "check configuration, stores, folders, models, GPU and alert channels")
    dlq = command("dlq", "list, requeue or clear dead-letter queues")
    dlq.add_argument("action", choices=DLQ_ACTIONS)
    dlq.add_argument("queue", nargs="?", help="detection_queue or analysis_queue")
    dlq.add_argument("--index", type=int, help="requeue only this entry (0-based)")
    alerts = command("alerts", "send a test alert through the channels")
    alerts.add_argument("action", choices=ALERTS_ACTIONS)
    alerts.add_argument("channels", nargs="*",
                        help="log, webhook, mqtt (default: those configured)")
    cleanup = command("cleanup", "apply the retention policy now")
    cleanup.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    models = command("models", "fetch or list model files")
    models.add_argument("action", choices=("fetch", "list"))
    models.add_argument("names", nargs="*", help="manifest entries to fetch (default all)")
    models.add_argument("--dest", type=Path, help="folder (default <state_dir>/models)")
    demo = command("demo", "see hsid work: own stores, test models, generated uploads "
                           "(Ctrl-C stops)")
    demo.add_argument("--dir", type=Path, default=Path("hsid-demo"),
                      help="folder for the demo's cameras, state and log (default ./hsid-demo)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    systemd = systemd_environment()
    try:
        config = load_config(args.config)
    except ConfigError as err:
        configure_logging("info", systemd.journal)
        log.error("config_invalid", error=str(err))
        print(f"hsid: {err}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, systemd.journal)
    if args.command in EMBEDDED_ADDRESSES:
        config = with_embedded_addresses(config)
    # A command's own module is imported when that command runs.
    try:
        if args.command == "run":
            from hsid.commands.run import run_command

            return run_command(config, args.stages, systemd)
        if args.command == "init-db":
            from hsid.commands.init_db import init_db_command

            return asyncio.run(init_db_command(config, sys.stdout))
        if args.command == "check":
            from hsid.commands.check import run_checks

            return asyncio.run(run_checks(config, sys.stdout))
        if args.command == "dlq":
            from hsid.commands.dlq import dlq_command

            return asyncio.run(dlq_command(config, args.action, args.queue, args.index,
                                           sys.stdout))
        if args.command == "alerts":
            from hsid.commands.alerts import alerts_command
            from hsid.core.config import alert_settings, site_zone

            return asyncio.run(alerts_command(alert_settings(config), args.action,
                                              args.channels, sys.stdout,
                                              public_url=config.api.public_url,
                                              zone=site_zone(config.site)))
        if args.command == "cleanup":
            from hsid.commands.cleanup import cleanup_command

            return asyncio.run(cleanup_command(config, args.dry_run, sys.stdout))
        if args.command == "demo":
            from hsid.commands.demo import run_demo

            return asyncio.run(run_demo(config, args.config, args.dir.resolve(), sys.stdout))
        if args.command == "models":
            from hsid.commands.models import models_command

            return models_command(config, args.action, args.names, args.dest)
    except HsidError as err:
        log.error("command_failed", command=args.command, error=str(err))
        return 1
    raise AssertionError(f"unhandled command {args.command}")
