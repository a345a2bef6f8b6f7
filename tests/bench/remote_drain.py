"""What the remote benchmarks (flaky_bench.py, latency_bench.py) share: the remote in its own
process (tests/bench/remote.py), relay's config for it, a backlog drained through relay's
agent, and a check of what arrived there.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from relay.agent import Agent
from relay.config import Settings, load
from relay.event import Event
from relay.spool import Spool

HERE = Path(__file__).parent
SINK = "cloud"


class RemoteProcess:
    """tests/bench/remote.py with ``flags``, until :meth:`close` (or the ``with`` ends)."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "remote.py"), *flags], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready, _, port = self.proc.stdout.readline().partition(" ")
        if ready != "ready":
            self.proc.kill()
            raise RuntimeError(f"remote.py {' '.join(flags)} did not start")
        self.base = f"http://127.0.0.1:{int(port)}"
        self.url = f"{self.base}/events"
        self.client = httpx.Client()

    def stats(self) -> dict[str, Any]:
        return dict(self.client.get(f"{self.base}/stats").json())

    def reset(self) -> None:
        self.client.post(f"{self.base}/reset").raise_for_status()

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> RemoteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_settings(state_dir: Path, url: str, **sink: int) -> Settings:
    """relay's config for one HTTP sink at ``url``, with ``sink``'s keys beside the defaults,
    read from a file as ``relay run`` reads it: a key relay does not know is a ConfigError."""
    keys = "".join(f"{key} = {value}\n" for key, value in sink.items())
    path = state_dir / "relay.toml"
    path.write_text(
        f"node = 'bench'\nstate_dir = {json.dumps(str(state_dir))}\n\n"
        f"[[sinks]]\nname = '{SINK}'\ntype = 'http'\nurl = {json.dumps(url)}\n{keys}"
    )
    return load(path)


def quiet_relay() -> None:
    # A flaky remote makes the forwarder log a warning at every failure that follows a
    # delivery: thousands of lines. They say nothing the remote's counts do not.
    logging.getLogger("relay").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Drained:
    seconds: float  # from starting the agent to the sink's queue being empty
    dead: list[str]  # the ids relay dead-lettered, in spool order


def drain(
    settings: Callable[[Path], Settings], backlog: Sequence[Event], *, stuck_s: float = 600
) -> Drained:
    """Run relay's agent on a spool holding ``backlog`` (queued while it was down) until the
    sink's queue is empty. ``settings(state_dir)`` is read first, before any event is
    stored (it may raise ConfigError). RuntimeError if the head of the queue has not moved
    for ``stuck_s`` seconds (longer than the longest backoff, 5 minutes by default)."""
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        config = settings(state)
        with Spool.open(state) as spool:
            spool.register_sinks([SINK])
            for i in range(0, len(backlog), 1000):
                spool.put_many(backlog[i : i + 1000])
        agent = Agent(config)
        stop = threading.Event()
        start = time.perf_counter()
        runner = threading.Thread(target=agent.run, args=(stop,), name="agent")
        runner.start()
        try:
            while not agent.ready.wait(1):
                if not runner.is_alive():
                    raise RuntimeError("the agent did not start (see its log above)")
            assert agent.spool is not None
            _wait_empty(agent.spool, stuck_s)
            elapsed = time.perf_counter() - start
            dead = [letter.event_id for letter in agent.spool.dead_letters(SINK)]
        finally:
            stop.set()
            runner.join()
    return Drained(elapsed, dead)


def _wait_empty(spool: Spool, stuck_s: float) -> None:
    head, since = 0, time.monotonic()
    # A poll, as backlog.py's: lease() of one is O(1) and leaves the queue as it is.
    while records := spool.lease(SINK, 1).records:
        if records[0].seq != head:
            head, since = records[0].seq, time.monotonic()
        elif time.monotonic() - since > stuck_s:
            raise RuntimeError(f"the drain is stuck: event seq {head} at the head for {stuck_s}s")
        time.sleep(0.02)


@dataclass(frozen=True)
class Arrived:
    """What the remote received of the events it should have, the ``expected`` ones."""

    expected: int
    received: int  # of the expected ones, distinct
    lost: int  # expected, never received
    unexpected: int  # received, not expected (a dead-lettered event that got through)
    duplicates: int  # arrivals beyond the first
    out_of_order: int  # expected events that arrived after one queued behind them
    requests: dict[str, int]  # by status

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def verdict(self) -> str:
        parts = [
            f"{self.received:,} of {self.expected:,} arrived",
            "in order" if not self.out_of_order else f"{self.out_of_order:,} out of order",
            f"{self.duplicates:,} duplicates",
        ]
        if self.unexpected:
            parts.append(f"{self.unexpected:,} UNEXPECTED")
        return ", ".join(parts)

    def check(self, what: str) -> None:
        """Fail loudly if an event was lost (or one arrived that should not have): a rate
        of a drain that loses events means nothing."""
        if self.lost or self.unexpected:
            raise SystemExit(f"{what}: {self.verdict()}")


def arrived(stats: dict[str, Any], expected: Sequence[str]) -> Arrived:
    position = {key: i for i, key in enumerate(stats["order"])}
    wanted = set(expected)
    received = [key for key in expected if key in position]
    # An event is out of order if one queued after it arrived first: the smallest arrival
    # position among the events behind it is before its own.
    out_of_order, first_behind = 0, len(position)
    for key in reversed(received):
        out_of_order += position[key] > first_behind
        first_behind = min(first_behind, position[key])
    return Arrived(
        expected=len(expected),
        received=len(received),
        lost=len(expected) - len(received),
        unexpected=sum(key not in wanted for key in position),
        duplicates=int(stats["duplicates"]),
        out_of_order=out_of_order,
        requests=dict(stats["requests"]),
    )
