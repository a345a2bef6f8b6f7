"""Partitions (P1, P4 end to end): a FaultProxy sits between the agent and each far end
(Mosquitto, RabbitMQ, the HTTP server) and stalls or blackholes the link while events
stream in. Each dead link must be noticed within about 1.5x its timer (MQTT keepalive, AMQP
heartbeat, HTTP timeout), reconnected once the proxy passes again, and nothing lost.

The existing tests cover one link each in-process (tests/test_amqp_integration.py: a dead
AMQP link with heartbeat_s = 1); these run ``relay run`` with all three links cut at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import relay
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
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.common import need_service
from tests.helpers.faultproxy import FaultProxy, Mode
from tests.helpers.http_server import RemoteServer
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

KEEPALIVE_S = 5  # the smallest keepalive_s the config accepts
HEARTBEAT_S = 4
TIMEOUT_S = 3
SLACK_S = 1.0  # scheduling on a loaded 2-core machine, on top of 1.5x
EVENTS, RATE = 700, 50.0  # a stream of ~14 s that runs through both cuts
MODES: tuple[Mode, ...] = ("stall", "blackhole")

# What the agent logs when it notices each dead link, and when it is back.
NOTICED = {
    "mqtt": "mqtt: disconnected from",
    "amqp": "sink bus: connection to",
    "http": "sink cloud: no complete answer from",
}
BACK = {"mqtt": "mqtt: connected to", "amqp": "sink bus: connected to", "http": "delivering again"}
LIMIT = {"mqtt": KEEPALIVE_S, "amqp": HEARTBEAT_S, "http": TIMEOUT_S}


def test_dead_links_are_noticed_reconnected_and_lose_nothing(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    """One agent, a stream of events, and two partitions of all three links: a stall (the
    connections stay open, nothing moves), then a blackhole (new connections vanish too)."""
    need_service("RabbitMQ", 5672)
    topic = unique("relayfault/")
    with (
        quiet(RemoteServer()) as server,
        AmqpQueue("amqp://guest:guest@127.0.0.1:5672/%2F") as queue,
        FaultProxy(mosquitto.host, mosquitto.port) as to_mqtt,
        FaultProxy("127.0.0.1", 5672) as to_amqp,
        FaultProxy("127.0.0.1", server.port) as to_http,
    ):
        proxies = (to_mqtt, to_amqp, to_http)
        agent = AgentProcess(
            tmp_path,
            mqtt_part(to_mqtt.port, topic, keepalive_s=KEEPALIVE_S),
            http_sink_part(f"http://127.0.0.1:{to_http.port}/events", timeout_s=TIMEOUT_S),
            amqp_sink_part(
                f"amqp://guest:guest@127.0.0.1:{to_amqp.port}/%2F",
                queue.name,
                heartbeat_s=HEARTBEAT_S,
                timeout_s=TIMEOUT_S,
            ),
        )
        ledger = Ledger(range(EVENTS))

        def collect() -> bool:
            queue.drain(idle=0.05)
            ledger.replace("cloud", http_numbers(server, topic))
            ledger.replace("bus", queue.received)
            return ledger.complete("cloud") and ledger.complete("bus")

        def flowing() -> bool:
            return collect() or min(ledger.distinct("cloud"), ledger.distinct("bus")) >= seen + 20

        noticed: dict[Mode, dict[str, float]] = {}
        back: dict[Mode, dict[str, float]] = {}
        with agent, MqttNumbers(mosquitto.host, mosquitto.port, topic) as pub:
            agent.start(ready="mqtt: subscribed")
            pub.start(range(EVENTS), rate=RATE)
            for mode in MODES:
                seen = min(ledger.distinct("cloud"), ledger.distinct("bus"))
                wait_until(flowing, 20, "events flowing to both sinks", detail=agent.tail)
                noticed[mode], back[mode] = _partition(agent, proxies, mode)
            pub.join()
            pub.wait_acked()
            wait_until(collect, 60, "every event at both sinks", detail=agent.tail)
            assert agent.terminate() == 0, agent.tail()
    http = ledger.check("cloud", disruptions=len(MODES))
    amqp = ledger.check("bus", disruptions=len(MODES))
    print(f"\ndead links noticed after (limit 1.5x the timer + {SLACK_S:g}s):")
    for mode in MODES:
        for link, after in noticed[mode].items():
            print(
                f"  {mode} {link}: {after:.1f}s (timer {LIMIT[link]}s, "
                f"{after / LIMIT[link]:.2f}x); back {back[mode][link]:.1f}s after the link healed"
            )
    print(f"  {http.line()}\n  {amqp.line()}")
    for mode in MODES:
        for link, after in noticed[mode].items():
            assert after <= 1.5 * LIMIT[link] + SLACK_S, f"{mode} {link}: {after:.1f}s to notice"


def _partition(
    agent: AgentProcess, proxies: tuple[FaultProxy, ...], mode: Mode
) -> tuple[dict[str, float], dict[str, float]]:
    """Cut every link in ``mode`` until the agent has noticed each, then heal them; the
    seconds from the cut to each notice, and from the heal to each link's recovery."""
    mark = agent.mark()
    cut = time.monotonic()
    for proxy in proxies:
        proxy.set_mode(mode)
    # The HTTP sink can only notice a dead link while it has something to send, and the
    # stream it sends comes through the MQTT link just cut: without this event it would
    # depend on an MQTT message still in flight at the cut. In-process, so it is on disk
    # (and the agent woken) within milliseconds of the cut; not numbered, so not counted.
    relay.push("partition", {"mode": mode}, config_path=agent.config)
    noticed = {
        link: agent.wait_line(text, 3 * LIMIT[link] + 10, since=mark).at - cut
        for link, text in NOTICED.items()
    }
    healed = time.monotonic()
    for proxy in proxies:
        proxy.set_mode("pass")
    back = {link: agent.wait_line(text, 30, since=mark).at - healed for link, text in BACK.items()}
    return noticed, back
