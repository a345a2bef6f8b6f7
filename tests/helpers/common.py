"""Helpers shared by tests: how to run relay, and whether a broker is there."""

from __future__ import annotations

import os
import socket
import sys

import pytest

REQUIRE_BROKERS = os.environ.get("RELAY_REQUIRE_BROKERS") == "1"
RELAY = [sys.executable, "-m", "relay"]


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
