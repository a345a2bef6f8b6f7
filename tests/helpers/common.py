"""Helpers shared by tests: how to run relay, and whether a broker is there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

REQUIRE_BROKERS = os.environ.get("RELAY_REQUIRE_BROKERS") == "1"
RELAY = [sys.executable, "-m", "relay"]
# relay's first line where the venv has no systemd-python (made without libsystemd-dev): a
# fact about the install, which tests/test_systemd_notify.py checks.
NO_SYSTEMD_PYTHON = "relay.systemd: systemd-python is not installed"


def about_the_run(lines: Iterable[str]) -> list[str]:
    """relay's log ``lines`` without the one about the install (NO_SYSTEMD_PYTHON), for a test
    of what relay says about something else, on a machine with or without libsystemd-dev."""
    return [line for line in lines if NO_SYSTEMD_PYTHON not in line]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, port: int) -> None:
    """Skip (or, under CI, fail) when a broker is not listening on loopback."""
    if port_open("127.0.0.1", port):
        return
    reason = f"{name} is not listening on 127.0.0.1:{port}"
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason} (RELAY_REQUIRE_BROKERS=1: broker tests must run)")
    pytest.skip(reason)


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """Read the stderr of ``relay run`` up to the first line containing ``text``; the lines
    read. Fails, showing them, if the agent exits first."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the agent exited before {text!r}:\n" + "".join(lines))


def sink_status(env: dict[str, str], cfg: Path) -> dict[str, Any]:
    """The first sink of ``relay status --json`` (it reads the spool file, agent up or not)."""
    out = subprocess.run(
        [*RELAY, "status", "--json", "--config", str(cfg)],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out)["sinks"][0])
