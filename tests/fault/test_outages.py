"""Sink outages (P1, P4 end to end): the HTTP service answering 503, RabbitMQ restarted, and
both at once, while events stream in over MQTT into ``relay run``. Nothing is lost, the
backlog drains once the far end is back, and the retries during the outage follow the
backoff schedule (capped, with full jitter): no retry storm.

The HTTP outage lasts ``RELAY_FAULT_OUTAGE_S`` (default 30 s, the issue's figure); the
outage of both at once lasts ``RELAY_FAULT_BOTH_S`` (default 5 s; stopping and starting
RabbitMQ takes longer than that here, about 12 s, and sets the real length).
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.fault.harness import (
    AgentProcess,
    AmqpQueue,
    Ledger,
    MqttNumbers,
    amqp_sink_part,
    http_numbers,
    http_sink_part,
    mqtt_part,
    quiet,
)
from tests.helpers.brokers import PrivateMosquitto, PrivateRabbit
from tests.helpers.common import need_service
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.http_server import Received, RemoteServer, Reply
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
OUTAGE_S = float(os.environ.get("RELAY_FAULT_OUTAGE_S", "30"))
BOTH_S = float(os.environ.get("RELAY_FAULT_BOTH_S", "5"))
RATE = 20.0  # events per second, all through each outage
# The retry policy of both sinks: 0.5 s, doubling, capped at 4 s, each with full jitter.
INITIAL_S, FACTOR, CAP_S = 0.5, 2.0, 4.0
RETRY = {"retry_initial": f"{INITIAL_S:g}s", "retry_factor": FACTOR, "retry_max": f"{CAP_S:g}s"}
DRAIN_S = 20.0  # the backlog must be through within this of the far end coming back


def most_retries(seconds: float, quantile: float = 0.999, trials: int = 20_000) -> int:
    """How many attempts the schedule allows in ``seconds`` (at this quantile): delays drawn
    uniformly from 0 to min(cap, initial * factor^(n-1)), counted by simulation, so that the
    bound comes from the documented schedule and not from relay's own code."""
    rng = random.Random(7)
    counts = []
    for _ in range(trials):
        spent, n = 0.0, 1  # the attempt that failed first
        while True:
            spent += rng.uniform(0, min(CAP_S, INITIAL_S * FACTOR ** (n - 1)))
            if spent > seconds:
                break
            n += 1
        counts.append(n)
    counts.sort()
    return counts[int(quantile * (trials - 1))]


class Switch:
    """An HTTP responder: 503 while ``down`` is set, else 200."""

    def __init__(self) -> None:
        self.down = threading.Event()

    def __call__(self, request: Received, count: int) -> Reply:
        return Reply(503) if self.down.is_set() else Reply(200)


class Run:
    """The agent with an MQTT source and both sinks, a stream of numbered events, and the
    ledger of what each sink got."""

    def __init__(
        self,
        tmp_path: Path,
        mosquitto: PrivateMosquitto,
        server: RemoteServer,
        amqp_url: str,
        reader_url: str | None = None,
    ) -> None:
        self.topic = unique("relayfault/")
        self.server = server
        self.queue = AmqpQueue(reader_url or amqp_url)
        self.agent = AgentProcess(
            tmp_path,
            mqtt_part(mosquitto.port, self.topic),
            http_sink_part(server.url, batch_max=50, **RETRY),
            amqp_sink_part(amqp_url, self.queue.name, timeout_s=3, heartbeat_s=4, **RETRY),
        )
        self.pub = MqttNumbers(mosquitto.host, mosquitto.port, self.topic)
        self.events = 0
        self.ledger = Ledger([])

    def start(self, seconds: float) -> None:
        """Start the agent and a stream of ``seconds`` at RATE; wait for first deliveries."""
        self.events = int(seconds * RATE)
        self.ledger = Ledger(range(self.events))
        self.agent.start(ready="mqtt: subscribed")
        self.pub.start(range(self.events), rate=RATE)
        wait_until(lambda: self.seen("cloud") >= 10 and self.seen("bus") >= 10, 20, "a start")

    def seen(self, sink: str) -> int:
        self.collect()
        return self.ledger.distinct(sink)

    def collect(self) -> bool:
        self.queue.drain(idle=0.05)
        self.ledger.replace("cloud", http_numbers(self.server, self.topic))
        self.ledger.replace("bus", self.queue.received)
        return self.ledger.complete("cloud") and self.ledger.complete("bus")

    def finish(self) -> float:
        """Wait for the stream and for every event at both sinks; when they were all in
        (monotonic)."""
        self.pub.join()
        self.pub.wait_acked()
        wait_until(
            self.collect,
            DRAIN_S + self.events / RATE,
            "every event at both sinks",
            detail=lambda: "\n".join(
                [self.ledger.report(s).line() for s in ("cloud", "bus")] + [self.agent.tail()]
            ),
        )
        done = time.monotonic()
        assert self.agent.terminate() == 0, self.agent.tail()
        return done

    def close(self) -> None:
        self.agent.close()
        self.pub.close()
        self.queue.delete()
        self.queue.close()


def test_http_503_for_a_while_then_200(tmp_path: Path, mosquitto: PrivateMosquitto) -> None:
    need_service("RabbitMQ", 5672)
    switch = Switch()
    with quiet(RemoteServer(switch)) as server:
        run = Run(tmp_path, mosquitto, server, RABBIT)
        try:
            run.start(OUTAGE_S + 4)
            switch.down.set()
            down = time.monotonic()
            bus_before = run.seen("bus")
            time.sleep(OUTAGE_S)
            bus_during = run.seen("bus") - bus_before
            switch.down.clear()
            up = time.monotonic()
            done = run.finish()
        finally:
            run.close()
    asked = [r.at for r in server.received if down <= r.at < up]
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    allowed = most_retries(up - down)
    http = run.ledger.check("cloud", disruptions=0)
    amqp = run.ledger.check("bus", disruptions=0)
    print(
        f"\nHTTP 503 for {up - down:.0f}s: {len(asked)} requests (the schedule allows "
        f"{allowed}), longest gap {max(gaps, default=0):.1f}s (cap {CAP_S:g}s); "
        f"the AMQP sink took {bus_during} events meanwhile; all in {done - up:.1f}s "
        f"after recovery\n  {http.line()}\n  {amqp.line()}"
    )
    assert 2 <= len(asked) <= allowed, "retries do not follow the backoff schedule"
    assert max(gaps) <= CAP_S + 1.0, "a retry waited longer than retry_max"
    assert bus_during >= OUTAGE_S * RATE / 2, "the HTTP outage held up the AMQP sink"


def test_rabbitmq_restarted(
    tmp_path: Path, mosquitto: PrivateMosquitto, rabbit: PrivateRabbit
) -> None:
    with quiet(RemoteServer()) as server, FaultProxy(rabbit.host, rabbit.port) as door:
        # The proxy passes everything; it counts the sink's connection attempts.
        url = f"amqp://guest:guest@127.0.0.1:{door.port}/%2F"
        run = Run(tmp_path, mosquitto, server, url, reader_url=rabbit.url)
        try:
            run.start(12)
            down, before = time.monotonic(), door.connections
            rabbit.restart()  # graceful: the durable queue and persistent messages stay
            up, tries = time.monotonic(), door.connections - before
            done = run.finish()
        finally:
            run.close()
    allowed = most_retries(up - down)
    http = run.ledger.check("cloud", disruptions=0)
    amqp = run.ledger.check("bus", disruptions=1)
    print(
        f"\nRabbitMQ restart ({up - down:.1f}s down): {tries} reconnection attempts "
        f"(the schedule allows {allowed}); all in {done - up:.1f}s after it was back\n"
        f"  {http.line()}\n  {amqp.line()}"
    )
    assert tries <= allowed, "reconnection attempts do not follow the backoff schedule"


def test_both_at_once(tmp_path: Path, mosquitto: PrivateMosquitto, rabbit: PrivateRabbit) -> None:
    switch = Switch()
    with quiet(RemoteServer(switch)) as server:
        run = Run(tmp_path, mosquitto, server, rabbit.url)
        try:
            run.start(BOTH_S + 10)
            switch.down.set()
            down = time.monotonic()
            rabbit.stop()
            time.sleep(max(0.0, BOTH_S - (time.monotonic() - down)))
            rabbit.start()
            switch.down.clear()
            up = time.monotonic()
            done = run.finish()
        finally:
            run.close()
    asked = len([r for r in server.received if down <= r.at < up])
    allowed = most_retries(up - down)
    http = run.ledger.check("cloud", disruptions=0)
    amqp = run.ledger.check("bus", disruptions=1)
    print(
        f"\nHTTP 503 and RabbitMQ down together for {up - down:.1f}s: {asked} HTTP requests "
        f"(the schedule allows {allowed}); all in {done - up:.1f}s after\n"
        f"  {http.line()}\n  {amqp.line()}"
    )
    assert asked <= allowed, "retries do not follow the backoff schedule"
