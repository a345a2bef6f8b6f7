"""``relay demo``: the whole path on one screen, with nothing to install or configure.

A door sensor on a simulated GPIO pin (gpiozero's MockFactory) produces events; the real
agent spools them and forwards them to a "remote service" on loopback that fails about half
of the requests; the terminal shows each event pushed, refused, retried and delivered, with
the spool depth, then a summary.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from relay.agent import Agent
from relay.config import GpioConfig, GpioSourceConfig, HttpSinkConfig, Settings, SpoolConfig


@dataclass
class Tally:
    produced: int = 0
    delivered: int = 0
    refused: int = 0
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)
    numbers: dict[str, int] = field(default_factory=dict)  # event id -> its number
    pushed_at: list[float] = field(default_factory=list)  # monotonic, by number
    lock: threading.Lock = field(default_factory=threading.Lock)
    all_delivered: threading.Event = field(default_factory=threading.Event)


class View:
    """One line per happening, for a person watching the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.lock = out, threading.Lock()
        self.agent: Agent | None = None

    def line(self, what: str, text: str) -> None:
        spool = self.agent.spool if self.agent is not None else None
        depth = spool.stats().sinks[0].depth if spool is not None and not spool.closed else 0
        with self.lock:
            print(f"  {what:<10} {text:<44} spool depth {depth}", file=self.out, flush=True)


def _flaky_remote(tally: Tally, view: View, fail_rate: float, target: int) -> ThreadingHTTPServer:
    rng = random.Random()

    class Remote(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with tally.lock:  # events arrive in order: the first sight of an id numbers it
                number = tally.numbers.setdefault(event["id"], len(tally.numbers) + 1)
            label = f"#{number} {event['name']}"
            if rng.random() < fail_rate:
                with tally.lock:
                    tally.refused += 1
                view.line("refused", f"{label}: remote said 503, will retry")
                self._reply(503)
                return
            with tally.lock:
                duplicate = event["id"] in tally.seen
                tally.seen.add(event["id"])
                tally.duplicates += duplicate
                tally.delivered += not duplicate
                waited = time.monotonic() - tally.pushed_at[number - 1]
                if tally.delivered >= target:
                    tally.all_delivered.set()
            view.line("delivered", f"{label} after {waited:.1f}s" + (" (dup)" * duplicate))
            self._reply(200)

        def _reply(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Remote)


def run(
    events: int = 10, fail_rate: float = 0.5, interval: float = 0.3, out: TextIO = sys.stdout
) -> Tally:
    """Run the demo; returns the tally (the CLI prints it)."""
    logging.getLogger("relay").setLevel(logging.ERROR)  # the view says it all
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        view = View(out)
        server = _flaky_remote(tally, view, fail_rate, events)
        port = server.server_address[1]
        agent = view.agent = Agent(_settings(Path(tmp), f"http://127.0.0.1:{port}/door-events"))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,), name="agent")
        print(
            f"relay demo: a door sensor, a remote service on 127.0.0.1:{port} that fails "
            f"{fail_rate:.0%} of requests, {events} events\n",
            file=out,
        )
        runner.start()
        agent.ready.wait(30)
        try:
            _door_sensor(agent, tally, view, events=events, interval=interval, stop=stop)
            tally.all_delivered.wait()
        except KeyboardInterrupt:
            print("\n  interrupted", file=out)
        finally:
            stop.set()
            runner.join()
            server.shutdown()
            server.server_close()
    print(
        f"\nproduced {tally.produced}, delivered {tally.delivered}, refused and retried "
        f"{tally.refused}, duplicates seen by the remote {tally.duplicates}",
        file=out,
    )
    return tally


def _door_sensor(
    agent: Agent, tally: Tally, view: View, *, events: int, interval: float, stop: threading.Event
) -> None:
    """The door: a reed switch on GPIO 17 (gpiozero's MockFactory), opened and closed."""
    from relay.sources.gpio import GpioSource

    source = next(c for c in agent.components if isinstance(c, GpioSource))
    pin = source.pin_factory.pin(17)
    for n in range(1, events + 1):
        with tally.lock:
            tally.pushed_at.append(time.monotonic())
            tally.produced += 1
        # Pull-up wiring: the switch closes to ground when the door opens.
        if n % 2:
            pin.drive_low()
        else:
            pin.drive_high()
        view.line("pushed", f"#{n} door {'opened' if n % 2 else 'closed'}")
        if stop.wait(interval):
            return


def _settings(state_dir: Path, url: str) -> Settings:
    door = GpioSourceConfig(
        type="gpio",
        pin=17,
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
        node="demo-pi",
        state_dir=state_dir,
        spool=SpoolConfig(),
        sinks=[sink],
        sources=[door],
        gpio=GpioConfig(pin_factory="mock"),
    )
