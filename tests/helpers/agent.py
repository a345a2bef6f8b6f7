"""Run the real agent in-process, in a thread, for integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.agent import Agent
from relay.config import load
from relay.spool import Spool
from tests.helpers.wait import wait_until


@contextmanager
def running_agent(config: Path) -> Iterator[Agent]:
    """Start the agent on ``config``; stop it (as SIGTERM would) when the block ends."""
    agent = Agent(load(config))
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="agent")
    thread.start()
    wait_until(lambda: agent.ready.is_set() or bool(errors) or not thread.is_alive(), 20)
    if errors:
        raise errors[0]
    try:
        yield agent
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


def spool_of(agent: Agent) -> Spool:
    assert agent.spool is not None
    return agent.spool
