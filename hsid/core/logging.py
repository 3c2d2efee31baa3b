"""Log output: structlog on top of the standard library, journald-friendly under systemd."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# journald reads a "<N>" prefix as the syslog priority, so `journalctl -p warning` filters.
SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# Chatty third-party loggers kept at warning so the journal shows hsid's own story.
QUIET_LOGGERS = ("aiohttp.access", "asyncio", "watchfiles", "asyncpg")

_PRE_CHAIN: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ExtraAdder(),
]


class JournalRenderer:
    """One line per record: `<N>logger event key=value ...`, no timestamp (journald adds one)."""

    def __init__(self) -> None:
        self._logfmt = structlog.processors.LogfmtRenderer(sort_keys=False)

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        level = event_dict.pop("level", method_name)
        name = event_dict.pop("logger", "hsid")
        event = event_dict.pop("event", "")
        priority = SYSLOG_PRIORITY.get(level, 6)
        rest = self._logfmt(logger, method_name, event_dict) if event_dict else ""
        line = f"<{priority}>{name}: {event} {rest}".rstrip()
        # A traceback must not become many journal records.
        return line.replace("\n", "\\n")


def configure_logging(level: str = "info", journal: bool = False) -> None:
    """Set up structlog and the standard library once, at start-up.

    `journal=True` (JOURNAL_STREAM is set) selects the journald line format; otherwise a
    terminal gets coloured console output and a pipe gets plain console output.
    """
    if journal:
        renderer: Any = JournalRenderer()
        chain = [*_PRE_CHAIN, structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        chain = [*_PRE_CHAIN, structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=False)]
    structlog.configure(
        processors=[
            *chain[:1],
            structlog.stdlib.filter_by_level,
            *chain[1:],
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("hsid-console")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=chain,
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "hsid-console"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
