"""Each command imports what it needs: a ``relay push`` from a script on a Pi Zero pays for
every module it imports, so the commands that only read the config and the spool import no
library of an adapter, nor pydantic-settings (whose import took a quarter of their time), and
still validate the whole config. The figures are tests/bench/cli_bench.py's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import toml

# What the adapters import (only the agent needs them), and pydantic-settings (only an
# environment override needs it).
HEAVY = ("pydantic_settings", "httpx", "paho", "pika", "redis", "gpiozero", "prometheus_client")


def imported(
    args: list[str], env: dict[str, str]
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The top-level packages ``relay ARGS`` imported (``python -X importtime``), and how it
    ended."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "relay", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, done


@pytest.fixture
def cfg(write_config: Callable[..., Path]) -> Path:
    """Every kind of sink and an MQTT source and device: whatever a command imports for them
    shows."""
    return write_config(
        toml.mqtt_in(1883, "home"),
        toml.http_sink("http://127.0.0.1:9/"),
        toml.amqp_sink("amqp://127.0.0.1:5672/%2F", queue="events"),
        toml.redis_sink("redis://127.0.0.1:6379/0", "s"),
        toml.mqtt_device("zigbee2mqtt/lamp/set", actions=["on", "off"]),
    )


@pytest.mark.parametrize(
    "args",
    [
        ["push", "door opened", "--payload", '{"state": "open"}'],
        ["status"],
        ["status", "--json"],
        ["command", "lamp", "on"],
        ["dlq", "list"],
    ],
)
def test_spool_commands_import_no_adapter_library(
    args: list[str], cfg: Path, relay_env: dict[str, str]
) -> None:
    names, done = imported([*args, "--config", str(cfg)], relay_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "relay" in names and "pydantic" in names  # the config is validated
    assert not names & set(HEAVY), f"relay {args[0]} imported {sorted(names & set(HEAVY))}"


def test_push_still_refuses_a_bad_config(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    cfg = write_config(toml.http_sink("http://127.0.0.1:9/", timeout_s="soon"))
    names, done = imported(["push", "x", "--config", str(cfg)], relay_env)
    assert done.returncode == 78
    assert f"{cfg}: sinks[0].timeout_s:" in done.stderr
    assert "pydantic_settings" not in names


def test_an_environment_override_still_applies_to_push(
    cfg: Path, relay_env: dict[str, str]
) -> None:
    relay_env["RELAY_SPOOL__WHEN_FULL"] = "sometimes"
    names, done = imported(["push", "x", "--config", str(cfg)], relay_env)
    assert done.returncode == 78 and "spool.when_full" in done.stderr
    assert "pydantic_settings" in names  # imported for the override, only then
