"""Push notifications through Apprise: the message a person reads on a phone, picture attached.

Apprise (ntfy, Pushover, Telegram, Discord, Gotify, Matrix, e-mail, Home Assistant notify and
about a hundred more) is blocking, so a send runs in a worker thread. Each URL of
`[alerts] apprise_urls` is sent to on its own: the keys of those that took the message are
kept in the alert's delivery state, so a retry reaches only the ones that failed and nobody
gets the same alert twice. An Apprise URL holds its service's secrets (tokens, topics), so
it never appears in a log or an error: hsid names it by its position and scheme, masks its
parts in Apprise's messages, and keeps Apprise's own log lines out of the journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import apprise
from apprise.attachment.memory import AttachMemory

from hsid.core.errors import PermanentError, TransientError

APPRISE_LOGGER = "apprise"
# Apprise's log lines can quote the secrets in its URLs: hsid reports failures itself.
logging.getLogger(APPRISE_LOGGER).propagate = False
# The log capture below is per process; one send at a time keeps each failure's reason its own.
_SENDING = threading.Lock()
SEVERITY_TYPES = {"low": apprise.NotifyType.INFO, "medium": apprise.NotifyType.WARNING,
                  "high": apprise.NotifyType.WARNING, "critical": apprise.NotifyType.FAILURE}
MIN_SECRET_CHARS = 3  # URL parts shorter than this are masked nowhere (they'd mask words)


@dataclass(frozen=True, slots=True)
class PushMessage:
    title: str
    body: str
    severity: str = "low"
    picture: bytes | None = None  # JPEG
    picture_name: str = "hsid.jpg"


def target_key(url: str) -> str:
    """A URL's name in the delivery state: stable, and never the URL (a secret)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def shown_url(url: str, index: int) -> str:
    """How an Apprise URL is named in errors and logs: its place and its scheme only."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"alerts.apprise_urls[{index}] ({scheme}://***)"


def compose(data: dict[str, Any], object_type: str | None, zone: tzinfo | None,
            public_url: str) -> tuple[str, str]:
    """(title, body) of an alert: "Front door: high risk, person"; the summary, the local
    time it started, and a link to the event."""
    camera = data.get("camera_name") or data.get("camera_id") or "camera"
    title = f"{camera}: {data.get('risk_level') or 'unknown'} risk"
    if object_type:
        title += f", {object_type}"
    lines = [str(data.get("summary") or "").strip()]
    if started := data.get("started_at"):
        with contextlib.suppress(ValueError, TypeError):
            moment = datetime.fromisoformat(started).astimezone(zone)
            lines.append(moment.strftime("%a %d %b %Y, %H:%M:%S %Z").strip())
    if data.get("event_id") is not None:
        lines.append(f"{public_url.rstrip('/')}/api/events/{data['event_id']}")
    return title, "\n".join(line for line in lines if line)


def send_push(urls: Sequence[str], message: PushMessage, sent: list[str]) -> None:
    """Blocking: send `message` to each URL whose key is not in `sent`, appending the key of
    each that took it. Raises TransientError when one may take it on a retry (the service
    refused or was unreachable), else PermanentError when a URL is not one Apprise knows."""
    retry, final = [], []
    for index, url in enumerate(urls):
        if target_key(url) in sent:
            continue
        problem = _send_one(url, index, message)
        if problem is None:
            sent.append(target_key(url))
        elif problem[0]:
            retry.append(problem[1])
        else:
            final.append(problem[1])
    if retry:
        raise TransientError("; ".join(retry + final))
    if final:
        raise PermanentError("; ".join(final))


def _send_one(url: str, index: int, message: PushMessage) -> tuple[bool, str] | None:
    """None when the service took the message, else (worth a retry, the reason)."""
    service = apprise.Apprise.instantiate(url)
    if service is None:
        return False, f"{shown_url(url, index)} is not a URL Apprise knows"
    sender = apprise.Apprise()
    sender.add(service)
    attach = None if message.picture is None else AttachMemory(
        content=message.picture, name=message.picture_name, mimetype="image/jpeg")
    with _SENDING, _captured() as lines:
        accepted = sender.notify(body=message.body, title=message.title, attach=attach,
                                 notify_type=SEVERITY_TYPES.get(message.severity,
                                                                apprise.NotifyType.INFO))
    if accepted:
        return None
    reason = _mask(lines[-1], url) if lines else "the service did not take the message"
    return True, f"{shown_url(url, index)}: {reason}"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Apprise's warnings and errors while the body runs."""
    handler = _Capture()
    logger = logging.getLogger(APPRISE_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def _mask(text: str, url: str) -> str:
    """`text` with every part of `url` that may be a secret (user, password, host, path
    segments, query values) replaced by ***."""
    parts = urlsplit(url)
    pieces = {parts.username, parts.password, parts.hostname, parts.netloc,
              *parts.path.split("/"), *(value for _, value in parse_qsl(parts.query))}
    for piece in sorted((p for p in pieces if p and len(p) >= MIN_SECRET_CHARS),
                        key=len, reverse=True):
        text = text.replace(piece, "***")
    return text
