"""Fixtures of the fault suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.brokers import PrivateMosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    """A private Mosquitto that queues up to 100,000 messages for an absent client (its
    default, 1,000, would drop what relay misses while cut off; test_kill_soak raises it
    further with its own fixture)."""
    with PrivateMosquitto(tmp_path / "mosquitto", extra="max_queued_messages 100000") as b:
        yield b
