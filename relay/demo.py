"""``relay demo``: the whole path on one screen, with nothing to configure.

A door sensor produces events: a reed switch on a simulated GPIO pin (gpiozero's
MockFactory) that the agent's GPIO source reads, or, where gpiozero is not installed, a local
producer that puts them into the spool as ``relay push`` does. The real agent spools them and
forwards them to a "remote service" on loopback that refuses about half of the requests; the
terminal shows each event pushed, refused, retried and delivered, then a summary.

Each line shows the spool's depth at that moment: the events stored and not yet delivered,
as the agent counts them (its acks not yet committed to the file included). A "pushed" line
comes once its event is stored, a "delivered" line once the agent has acked it, and the remote
answers an event only after its "pushed" line: so the depth of a "pushed" line counts its
event, and that of the last "delivered" line is 0.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TextIO

from relay import wiring
from relay.agent import Agent
from relay.config import GpioConfig, GpioSourceConfig, HttpSinkConfig, Settings, SpoolConfig
from relay.errors import SpoolError
from relay.event import Event
from relay.metrics import Metrics
from relay.spool import Spool

PIN = 17
NODE = "demo-pi"
HOLD_S = 5.0  # the longest the remote holds an answer for a line of the view (never, in practice)


@dataclass
class Tally:
    target: int
    produced: int = 0
    delivered: int = 0
    refused: int = 0
    duplicates: int = 0
    shown: int = 0  # "pushed" lines printed
    finished: bool = False  # every event delivered (not stopped by the user)
    stopping: bool = False
    seen: set[str] = field(default_factory=set)
    numbers: dict[str, int] = field(default_factory=dict)  # event id -> its number
    pushed_at: list[float] = field(default_factory=list)  # monotonic, by number
    lock: threading.Condition = field(default_factory=threading.Condition)


class Acks(Metrics):
    """How many events the agent's forwarder has acked: it reports a delivery to its metrics
    right after the spool's ack."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._acked = 0
        self._closed = False

    def delivered(self, sink: str, count: int) -> None:
        with self._changed:
            self._acked += count
            self._changed.notify_all()

    def wait(self, count: int, timeout: float) -> None:
        """Until ``count`` events are acked, the timeout, or :meth:`close`."""
        with self._changed:
            self._changed.wait_for(lambda: self._acked >= count or self._closed, timeout)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class View:
    """One line per happening, for a person watching the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.lock = out, threading.Lock()
        self.spool: Spool | None = None

    def line(self, what: str, text: str) -> None:
        with self.lock:  # the depth read and the line printed together, in order
            print(f"  {what:<10} {text:<44} spool depth {self._depth()}", file=self.out, flush=True)

    def _depth(self) -> str:
        try:
            return str(self.spool.stats().sinks[0].depth) if self.spool is not None else "-"
        except SpoolError:  # closed by the user's Ctrl-C meanwhile
            return "-"


class Door(Protocol):
    def move(self, n: int, opened: bool, stop: threading.Event) -> None:
        """Open or close the door: event ``n``; returns once it is stored (or at ``stop``)."""


class PinDoor:
    """A reed switch on GPIO 17 of gpiozero's MockFactory, read by the agent's GPIO source."""

    def __init__(self, agent: Agent, spool: Spool) -> None:
        from relay.sources.gpio import GpioSource

        source = next(c for c in agent.components if isinstance(c, GpioSource))
        self.pin = source.pin_factory.pin(PIN)
        self.spool = spool

    def move(self, n: int, opened: bool, stop: threading.Event) -> None:
        # Pull-up wiring: the switch closes to ground when the door opens.
        version = self.spool.version
        if opened:
            self.pin.drive_low()
        else:
            self.pin.drive_high()
        # The source stores the edge from gpiozero's thread; a commit that stores an event
        # moves the spool's version.
        while self.spool.tallies().ingested.get("gpio", 0) < n and not stop.is_set():
            version = self.spool.wait_for_change(version, 1.0)


class LocalDoor:
    """Without gpiozero: the door as a local producer, storing each event itself."""

    def __init__(self, spool: Spool, node: str) -> None:
        self.spool, self.node = spool, node

    def move(self, n: int, opened: bool, stop: threading.Event) -> None:
        state = "open" if opened else "closed"
        name = "door opened" if opened else "door closed"
        self.spool.put(
            Event.new(node=self.node, source="push", name=name, payload={"state": state})
        )


def _flaky_remote(
    tally: Tally, view: View, acks: Acks, fail_rate: float, stop: threading.Event
) -> ThreadingHTTPServer:
    rng = random.Random()

    class Remote(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with tally.lock:  # events arrive in order: the first sight of an id numbers it
                number = tally.numbers.setdefault(event["id"], len(tally.numbers) + 1)
                tally.lock.wait_for(  # its "pushed" line first
                    lambda: tally.shown >= number or tally.stopping, HOLD_S
                )
            label = f"#{number} {event['name']}"
            if rng.random() < fail_rate:
                with tally.lock:
                    tally.refused += 1
                view.line("refused", f"{label}: remote said 503, will retry")
                self._reply(503)
                return
            self._reply(200)
            acks.wait(number, HOLD_S)  # the agent acks once it has read the answer
            with tally.lock:
                duplicate = event["id"] in tally.seen
                tally.seen.add(event["id"])
                tally.duplicates += duplicate
                tally.delivered += not duplicate
                waited = time.monotonic() - tally.pushed_at[number - 1]
                finished = tally.delivered >= tally.target
            view.line("delivered", f"{label} after {waited:.1f}s" + (" (dup)" * duplicate))
            if finished:
                tally.finished = True
                stop.set()

        def _reply(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Remote)


def run(
    events: int = 10,
    fail_rate: float = 0.5,
    interval: float = 0.3,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
) -> Tally:
    """Run the demo until every event is delivered or ``stop`` is set (the user's Ctrl-C);
    returns the tally (the CLI prints it)."""
    stop = stop or threading.Event()
    logging.getLogger("relay").setLevel(logging.ERROR)  # the view says it all
    tally, acks, view = Tally(target=events), Acks(), View(out)
    pin = importlib.util.find_spec("gpiozero") is not None
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        server = _flaky_remote(tally, view, acks, fail_rate, stop)
        port = server.server_address[1]
        settings = _settings(Path(tmp), f"http://127.0.0.1:{port}/door-events", pin=pin)
        agent = Agent(settings, build=partial(wiring.components, metrics=acks))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(
            f"relay demo: a door sensor, a remote service on 127.0.0.1:{port} that fails "
            f"{fail_rate:.0%} of requests, {events} events",
            file=out,
        )
        if not pin:
            print("  (no gpiozero here: the door is a local producer, not a GPIO pin)", file=out)
        print(file=out)
        try:
            agent.start()  # the agent's threads, as relay run starts them
            assert agent.spool is not None
            view.spool = agent.spool
            door: Door = PinDoor(agent, agent.spool) if pin else LocalDoor(agent.spool, NODE)
            _door_sensor(door, tally, view, interval=interval, stop=stop)
            stop.wait()
        finally:
            stop.set()
            with tally.lock:  # let the remote's answer in hand go
                tally.stopping = True
                tally.lock.notify_all()
            acks.close()
            agent.stop()
            server.shutdown()
            server.server_close()
    if not tally.finished:
        print("\n  stopped", file=out)
    print(
        f"\nproduced {tally.produced}, delivered {tally.delivered}, refused and retried "
        f"{tally.refused}, duplicates seen by the remote {tally.duplicates}",
        file=out,
    )
    return tally


def _door_sensor(
    door: Door, tally: Tally, view: View, *, interval: float, stop: threading.Event
) -> None:
    """Open and close the door, one event every ``interval`` seconds."""
    for n in range(1, tally.target + 1):
        with tally.lock:
            tally.pushed_at.append(time.monotonic())
            tally.produced += 1
        opened = bool(n % 2)
        door.move(n, opened, stop)
        if stop.is_set():
            return
        view.line("pushed", f"#{n} door {'opened' if opened else 'closed'}")
        with tally.lock:
            tally.shown = n
            tally.lock.notify_all()
        if stop.wait(interval):
            return


def _settings(state_dir: Path, url: str, *, pin: bool) -> Settings:
    door = GpioSourceConfig(
        type="gpio",
        pin=PIN,
        name="front_door",
        on_active="door opened",
        on_inactive="door closed",
        initial_event=False,
    )
    sink = HttpSinkConfig(
        name="remote",
        type="http",
        url=url,
        timeout_s=2,
        retry_initial=timedelta(seconds=0.5),
        retry_max=timedelta(seconds=3),
    )
    return Settings(
        node=NODE,
        state_dir=state_dir,
        spool=SpoolConfig(),
        sinks=[sink],
        sources=[door] if pin else [],
        gpio=GpioConfig(pin_factory="mock"),
    )
