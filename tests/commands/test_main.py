"""The `hsid` command line: the parser, and global options before or after the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsid.commands.main import build_parser
from hsid.daemon.stages import ALL_STAGE_GROUPS

# Every command, with the arguments it needs besides the global options.
COMMANDS = {
    "run": ["run"],
    "init-db": ["init-db"],
    "check": ["check"],
    "dlq": ["dlq", "list"],
    "alerts": ["alerts", "test"],
    "cleanup": ["cleanup", "--dry-run"],
    "models": ["models", "list"],
    "demo": ["demo"],
}

# The global options, each with a value given on the command line and its parsed value.
GLOBAL_OPTIONS = {"--config": ("/etc/hsid/other.toml", Path("/etc/hsid/other.toml"))}


def test_every_command_is_tested() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == set(COMMANDS)


@pytest.mark.parametrize("option", sorted(GLOBAL_OPTIONS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_global_option_is_taken_before_or_after_the_command(command: str, option: str) -> None:
    given, parsed = GLOBAL_OPTIONS[option]
    name = option.removeprefix("--").replace("-", "_")
    before = build_parser().parse_args([option, given, *COMMANDS[command]])
    after = build_parser().parse_args([*COMMANDS[command], option, given])
    assert getattr(before, name) == getattr(after, name) == parsed
    assert vars(before) == vars(after)


@pytest.mark.parametrize("option", sorted(GLOBAL_OPTIONS))
def test_a_global_option_left_out_after_the_command_keeps_the_one_before(option: str) -> None:
    given, parsed = GLOBAL_OPTIONS[option]
    name = option.removeprefix("--").replace("-", "_")
    assert getattr(build_parser().parse_args([option, given, "run"]), name) == parsed
    assert getattr(build_parser().parse_args(["run"]), name) is None
    # Given in both places, the one after the command (the later) counts.
    both = build_parser().parse_args([option, "/first.toml", "run", option, given])
    assert getattr(both, name) == parsed


def test_command_options_stay_the_commands_own() -> None:
    args = build_parser().parse_args(["run", "--stages", "watch,api", "--config", "x.toml"])
    assert args.stages == frozenset({"watch", "api"})
    assert build_parser().parse_args(["run"]).stages == frozenset(ALL_STAGE_GROUPS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--stages", "watch", "run"])  # not a global option


def _hsid(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m hsid ARGS` in a process of its own (the command sets up logging for good)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HSID_") and k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "hsid", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_init_db_reads_the_config_given_before_or_after_it(
    fresh_database_url: str, tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{fresh_database_url}"\n', encoding="utf-8")

    first = _hsid("init-db", "--config", str(config))
    second = _hsid("--config", str(config), "init-db")

    assert (first.returncode, first.stdout) == (0, "schema created\n"), first.stderr
    assert (second.returncode, second.stdout) == (0, "schema current\n"), second.stderr


def test_a_bad_config_file_after_the_command_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[database]\nno_such_key = 1\n", encoding="utf-8")
    result = _hsid("init-db", "--config", str(config))
    assert result.returncode == 2
    assert "no_such_key" in result.stderr
