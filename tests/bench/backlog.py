"""What the drain benchmarks share: the events, and timing the agent through a backlog."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
from relay.agent import Agent
from relay.config import Settings
from relay.event import Event
from relay.spool import Spool
from tests.helpers.wait import wait_until


def events(n: int) -> list[Event]:
    return [
        Event.new(
            node="bench", source="bench", name="home/hall/door", payload={"i": i, "state": "open"}
        )
        for i in range(n)
    ]


def drain_rate(settings: Callable[[Path], Settings], sink: str, n: int) -> float:
    """Events/s for relay to deliver a backlog of ``n`` queued while the agent was down:
    ``settings(state_dir)`` configures it, with ``sink`` among its sinks."""
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        with Spool.open(state) as spool:
            spool.register_sinks([sink])
            for i in range(0, n, 1000):
                spool.put_many(events(min(1000, n - i)))
        agent = Agent(settings(state))
        stop = threading.Event()
        start = time.perf_counter()
        runner = threading.Thread(target=agent.run, args=(stop,))
        runner.start()
        agent.ready.wait()
        assert agent.spool is not None
        spool = agent.spool
        wait_until(  # leasing one is O(1), unlike stats()
            lambda: not spool.lease(sink, 1).records, 3600, "the backlog drained", interval=0.02
        )
        elapsed = time.perf_counter() - start
        stop.set()
        runner.join()
    return n / elapsed
