"""The systemd unit: verified by systemd-analyze when the machine has it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hsid.service"


def test_unit_declares_notify_watchdog_and_sandboxing() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=hsid",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/hsid /srv/hsid/cameras",
                 "NoNewPrivileges=true", "PrivateTmp=true", "ProtectHome=true",
                 "RestrictAddressFamilies=", "After=", "postgresql.service"):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart exists, so point it at this environment's hsid.
    hsid = Path(sys.executable).with_name("hsid")
    unit = tmp_path / "hsid.service"
    unit.write_text(UNIT.read_text().replace("/opt/hsid/venv/bin/hsid", str(hsid)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
