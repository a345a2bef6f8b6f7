"""The agent's own bookkeeping of its components, in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay import config
from relay.agent import Agent


class Part:
    is_sink = False
    last_error = None

    def __init__(self, name: str, log: list[str], *, fails: bool = False) -> None:
        self.name, self._log, self._fails = name, log, fails

    def start(self) -> None:
        if self._fails:
            raise RuntimeError(f"{self.name} cannot start")
        self._log.append(f"start {self.name}")

    def stop(self) -> None:
        self._log.append(f"stop {self.name}")

    def alive(self) -> bool:
        return True


def test_a_failed_start_stops_only_what_started(write_config: Callable[..., Path]) -> None:
    log: list[str] = []
    parts = [Part("a", log), Part("b", log), Part("c", log, fails=True), Part("d", log)]
    agent = Agent(config.load(write_config("")), build=lambda settings, spool: list(parts))
    with pytest.raises(RuntimeError, match="c cannot start"):
        agent.start()
    agent.stop()
    assert log == ["start a", "start b", "stop b", "stop a"]
    assert agent.spool is None  # the spool was closed all the same
