"""systemd/relay.service passes ``systemd-analyze verify`` and ``systemd-analyze security``
with an exposure of at most 2.0 (of 10), as the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.common import REQUIRE_BROKERS

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "relay.service"
EXEC_START = "ExecStart=/opt/relay/bin/relay run --config /etc/relay.toml"
MAX_EXPOSURE = 2.0


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze is not installed (apt install systemd)"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; CI must check the unit")
        pytest.skip(reason)
    return subprocess.run(
        [tool, "--no-pager", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_unit_runs_what_scripts_install_installs() -> None:
    lines = UNIT.read_text().splitlines()
    assert EXEC_START in lines
    install = (REPO / "scripts" / "install").read_text()
    assert "VENV=/opt/relay\n" in install
    assert "CONFIG=/etc/relay.toml\n" in install


def test_the_unit_never_gives_up_restarting() -> None:
    """A unit that stays failed after a burst of failed starts (a disk full for half a
    minute at boot) leaves relay down until a person runs reset-failed; only a bad config
    is not restarted."""
    lines = UNIT.read_text().splitlines()
    assert "StartLimitIntervalSec=0" in lines
    assert not [line for line in lines if line.startswith("StartLimitBurst=")]
    assert "Restart=on-failure" in lines and "RestartPreventExitStatus=78" in lines
    assert "RestartSec=5" in lines  # no storm


def test_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists and is executable, and /opt/relay exists
    # only after scripts/install: check a copy that runs a stand-in, otherwise the same file
    # (its name too, which verify takes as the unit's name).
    stand_in = tmp_path / "relay"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    copy = tmp_path / "relay.service"
    copy.write_text(text.replace(EXEC_START, f"ExecStart={stand_in} run --config /etc/relay.toml"))
    assert copy.read_text() != text
    result = analyze("verify", copy)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_security_exposure_is_at_most_2() -> None:
    result = analyze("security", "--offline=true", "--threshold=20", UNIT)
    match = re.search(r"Overall exposure level for relay\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match[1])
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    # --threshold is the exposure times 10: one notch below ours must fail, which shows the
    # check above has teeth.
    stricter = analyze(
        "security", "--offline=true", f"--threshold={round(exposure * 10) - 1}", UNIT
    )
    assert stricter.returncode != 0
