"""The `hsid` command: run | init-db | check, and the operator tools beside them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from hsid.commands.alerts import ALERTS_ACTIONS, alerts_command
from hsid.commands.dlq import DLQ_ACTIONS, dlq_command
from hsid.core.config import Config, load_config, systemd_environment
from hsid.core.errors import ConfigError, HsidError
from hsid.core.logging import configure_logging
from hsid.daemon.app import run_daemon
from hsid.daemon.stages import ALL_STAGE_GROUPS
from hsid.embedded import with_embedded_addresses

log = structlog.get_logger(__name__)


def _stages(value: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = names - set(ALL_STAGE_GROUPS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose from {', '.join(ALL_STAGE_GROUPS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsid", description=__doc__)
    parser.add_argument("--config", type=Path, help="config file (default /etc/hsid/config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--stages", type=_stages, default=frozenset(ALL_STAGE_GROUPS),
                     help=f"comma-separated subset of {','.join(ALL_STAGE_GROUPS)} (default all)")
    commands.add_parser("init-db", help="apply schema.sql to the configured database")
    commands.add_parser("check", help="check configuration, stores, folders, models, GPU and "
                                      "alert channels")
    dlq = commands.add_parser("dlq", help="list, requeue or clear dead-letter queues")
    dlq.add_argument("action", choices=DLQ_ACTIONS)
    dlq.add_argument("queue", nargs="?", help="detection_queue or analysis_queue")
    dlq.add_argument("--index", type=int, help="requeue only this entry (0-based)")
    alerts = commands.add_parser("alerts", help="send a test alert through the channels")
    alerts.add_argument("action", choices=ALERTS_ACTIONS)
    alerts.add_argument("channels", nargs="*",
                        help="log, webhook, mqtt (default: those configured)")
    cleanup = commands.add_parser("cleanup", help="apply the retention policy now")
    cleanup.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    models = commands.add_parser("models", help="fetch or list model files")
    models.add_argument("action", choices=("fetch", "list"))
    models.add_argument("names", nargs="*", help="manifest entries to fetch (default all)")
    models.add_argument("--dest", type=Path, help="folder (default <state_dir>/models)")
    demo = commands.add_parser("demo", help="see hsid work: own stores, test models, "
                                            "generated uploads (Ctrl-C stops)")
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
    if args.command in ("init-db", "dlq", "cleanup"):
        config = with_embedded_addresses(config)
    try:
        if args.command == "run":
            return asyncio.run(run_daemon(config, args.stages, systemd))
        if args.command == "init-db":
            return asyncio.run(_init_db(config))
        if args.command == "check":
            from hsid.commands.check import run_checks

            return asyncio.run(run_checks(config, sys.stdout))
        if args.command == "dlq":
            return asyncio.run(dlq_command(config, args.action, args.queue, args.index,
                                           sys.stdout))
        if args.command == "alerts":
            from hsid.core.config import alert_settings, site_zone

            return asyncio.run(alerts_command(alert_settings(config), args.action,
                                              args.channels, sys.stdout,
                                              public_url=config.api.public_url,
                                              zone=site_zone(config.site)))
        if args.command == "cleanup":
            from hsid.upkeep.cleanup import cleanup_command

            return asyncio.run(cleanup_command(config, args.dry_run, sys.stdout))
        if args.command == "demo":
            from hsid.commands.demo import run_demo

            return asyncio.run(run_demo(config, args.config, args.dir.resolve(), sys.stdout))
        if args.command == "models":
            return _models(config, args.action, args.names, args.dest)
    except HsidError as err:
        log.error("command_failed", command=args.command, error=str(err))
        return 1
    raise AssertionError(f"unhandled command {args.command}")


def _models(config: Config, action: str, names: list[str], dest: Path | None) -> int:
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


async def _init_db(config: Config) -> int:
    from hsid.core.db import apply_schema, create_pool

    pool = await create_pool(config.database)
    try:
        await apply_schema(pool)
    finally:
        await pool.close()
    print("schema applied")
    return 0
