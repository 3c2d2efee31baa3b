"""sd_notify: tell systemd when hsid is ready, alive (watchdog) and stopping."""

from __future__ import annotations

import asyncio
import socket

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Sends datagrams to NOTIFY_SOCKET; a no-op when hsid is not run by systemd."""

    def __init__(self, socket_path: str | None) -> None:
        self._path = socket_path

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def notify(self, message: str) -> None:
        """Best effort: a lost notification must never take the daemon down."""
        if self._path is None:
            return
        # A leading "@" names a socket in the abstract namespace.
        address = "\0" + self._path[1:] if self._path.startswith("@") else self._path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
        except OSError as err:
            log.warning("sd_notify_failed", message=message, error=str(err))

    async def watchdog(self, watchdog_usec: int) -> None:
        """Ping WATCHDOG=1 at half the interval systemd asked for, from the event loop itself,
        so a blocked loop stops the pings and systemd restarts the service."""
        interval = watchdog_usec / 1_000_000 / 2
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
