"""Shared fixtures. Broker-backed tests skip on a machine without the broker, unless
``RELAY_REQUIRE_BROKERS=1`` (set by .ci/run), which turns those skips into failures."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import settings

from tests.helpers import toml
from tests.helpers.brokers import PrivateRabbit, rabbit_unusable
from tests.helpers.common import REQUIRE_BROKERS

settings.register_profile("ci", max_examples=500, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def write_config(tmp_path: Path, state_dir: Path) -> Callable[..., Path]:
    """``write_config(*parts, name="relay.toml")``: a relay.toml of the parts (built with
    tests.helpers.toml, or TOML text) whose node is "test-node" and whose state_dir is this
    test's; its path. Mode 0640, as installed (tests.helpers.toml.write)."""

    def write(*parts: str, name: str = "relay.toml") -> Path:
        body = textwrap.dedent("".join(parts))
        return toml.write(tmp_path / name, body, node="test-node", state_dir=state_dir)

    return write


@pytest.fixture
def relay_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment for relay subprocesses without the caller's RELAY_* overrides."""
    for key in list(os.environ):
        if key.startswith("RELAY_") and key != "RELAY_REQUIRE_BROKERS":
            monkeypatch.delenv(key)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node for the tests that stop, restart or block it; one per module."""
    reason = rabbit_unusable()
    if reason:
        if REQUIRE_BROKERS:
            pytest.fail(reason)
        pytest.skip(reason)
    with PrivateRabbit() as node:
        yield node


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """gpiozero's own twin of the pins (``pin(17).drive_low()``), reset before and after the
    test. gpiozero 1.x kept the pins and their reservations on the class, shared by every
    factory of the process, so a pin a test left behind showed up in the next; gpiozero 2
    keeps them per factory, and the resets keep that true whichever version is installed."""
    factory = MockFactory()
    factory.reset()
    yield factory
    factory.reset()
