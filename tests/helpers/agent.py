"""Run the real agent in-process, in a thread, for integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.agent import Agent
from relay.config import load
from relay.spool import Spool


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
    wait_for(lambda: agent.ready.is_set() or bool(errors) or not thread.is_alive(), 20)
    if errors:
        raise errors[0]
    try:
        yield agent
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


def wait_for(condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Wait until ``condition()`` holds (checked every 10 ms), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def spool_of(agent: Agent) -> Spool:
    assert agent.spool is not None
    return agent.spool
