"""kill -9 with a full window (``max_in_flight = 16``): 3,000 numbered MQTT messages at
300/s (faster than 16 requests of 100 ms take them, so a backlog keeps the window full) to a
remote that answers each request after 100 ms, relay killed three times while 16 requests
are under way. Nothing is lost; what the receiver sees twice is only what relay had
not acknowledged in its spool when it was killed (the cursor it committed), and always under
its first id: never a number spooled twice."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest

from tests.fault.harness import (
    AgentProcess,
    Ledger,
    MqttNumbers,
    http_numbers,
    http_sink_part,
    mqtt_part,
    quiet,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 3000
KILLS = 3
IN_FLIGHT = 16
RATE = 300


def committed_cursor(state_dir: Path) -> int:
    """The sink's cursor as the spool file holds it: what a restart starts after."""
    conn = sqlite3.connect(f"file:{state_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT cursor FROM sinks WHERE name='cloud'").fetchone()[0])
    finally:
        conn.close()


def under_way(server: RemoteServer) -> int:
    return sum(1 for r in list(server.received) if not r.done_at)


def test_kill_9_with_a_full_window_resends_only_the_unacknowledged(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    rng = random.Random(19)
    topic = unique("relayfault/")
    with quiet(RemoteServer(lambda r, n: Reply(delay=0.1))) as server:
        agent = AgentProcess(
            tmp_path,
            mqtt_part(mosquitto.port, topic),
            http_sink_part(server.url, max_in_flight=IN_FLIGHT),
        )
        with agent, MqttNumbers(mosquitto.host, mosquitto.port, topic) as pub:
            agent.start(ready="mqtt: subscribed")
            began = time.monotonic()
            pub.start(range(EVENTS), rate=RATE)
            kills: list[tuple[float, int]] = []  # (when, the cursor the spool kept)
            for _ in range(KILLS):
                time.sleep(rng.uniform(1, 3))
                wait_until(lambda: under_way(server) >= IN_FLIGHT, 20, "a full window")
                agent.kill()
                kills.append((time.monotonic(), committed_cursor(agent.state_dir)))
                agent.start(ready="mqtt: subscribed")
            pub.join()
            pub.wait_acked()
            ledger = Ledger(range(EVENTS))
            wait_until(
                lambda: (
                    ledger.replace("cloud", http_numbers(server, f"{topic}/seq"))
                    or ledger.complete("cloud")
                ),
                60,
                "every message delivered",
            )
            took = time.monotonic() - began
    report = ledger.report("cloud")
    assert not report.lost and not report.unexpected, report.line()
    assert report.respooled == 0, report.line()  # every duplicate under its first id

    # Each event delivered again was past the cursor of a kill between its two deliveries.
    firsts: dict[str, float] = {}
    for request in server.received:
        if not 200 <= request.status < 300:
            continue
        seq = int(request.headers["Relay-Sequence"])
        [event] = request.events
        if event["id"] not in firsts:
            firsts[event["id"]] = request.at
            continue
        between = [cursor for at, cursor in kills if firsts[event["id"]] < at < request.at]
        assert between and seq > min(between), (
            f"event {event['id']} (seq {seq}) sent again, though acknowledged before any kill"
        )
    print(
        f"\n{EVENTS} events at {RATE}/s, remote at 100 ms, max_in_flight {IN_FLIGHT}, {KILLS} kill -9"
        f" with a full window: {report.line()}; all delivered {took:.1f}s after the first publish"
    )
