"""Home Assistant MQTT discovery: the device config follows HA's conventions (and its templates
render what HA expects), states are published on change and rate-limited, nothing when idle;
then the whole thing against the real Mosquitto, with a real agent and a real HTTP sink."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2.sandbox
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from relay import config
from relay.config import HomeAssistantConfig
from relay.errors import ConfigError, NotConnected
from relay.event import Event
from relay.homeassistant import HaDiscovery, HaWakeups, Topics, discovery_config
from relay.logonce import LogOnce
from relay.mqtt import Message, Session
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent, spool_of
from tests.helpers.common import need_service
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import Publisher, spooled, unique
from tests.helpers.wait import wait_until

WALL = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CONFIG_TOPIC = "homeassistant/device/relay_hall_pi/config"
STATE_TOPIC = "relay/hall.pi/sinks/cloud"
ENTITIES = ("depth", "dead_letters", "oldest_age", "last_delivery", "connected")
SESSION = Session(
    lambda mid, qos: None,
    lambda: None,
    resumed=False,
    lock=threading.Lock(),
    refused=LogOnce(),
    on_hand_back=lambda reason: None,
)


# ------------------------------------------------------------------ in memory


class FakeBroker:
    """The MQTT connection's twin: records publishes, and tells the wakeups what the
    connection would (a new connection, a message on the birth topic)."""

    status_topic = "relay/hall.pi/status"

    def __init__(self, wakeups: HaWakeups) -> None:
        self.up = True
        self.sent: list[tuple[str, bytes, bool]] = []
        self.wakeups = wakeups

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> None:
        assert qos == 1
        if not self.up:
            raise NotConnected("not connected to the MQTT broker")
        self.sent.append((topic, payload, retain))

    def connected(self) -> None:
        """A CONNACK came (the link may drop again right after)."""
        self.wakeups.on_connect(SESSION)

    def connect(self) -> None:
        self.up = True
        self.connected()

    def birth(self, payload: bytes) -> None:
        topic = self.wakeups.birth_topic.encode()
        self.wakeups.on_message(Message(topic, payload, 0, 0, False, False, SESSION))

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.sent if t == STATE_TOPIC]

    def take(self) -> list[str]:
        topics = [t for t, _, _ in self.sent]
        self.sent.clear()
        return topics


@dataclass
class View:
    name: str
    connected: bool | None = None
    delivered_at: float | None = None


@dataclass
class Rig:
    ha: HaDiscovery
    broker: FakeBroker
    spool: Spool
    view: View
    seqs: list[int] = field(default_factory=list)

    def put(self) -> None:
        self.spool.put(Event.new(node="hall.pi", source="push", name="door", payload=None))

    def deliver_all(self) -> None:
        records = self.spool.lease("cloud", 100).records
        self.spool.ack("cloud", records[-1].seq)
        self.view.connected, self.view.delivered_at = True, WALL


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    spool = Spool.open(tmp_path, durability="memory")
    spool.register_sinks(["cloud"])
    cfg = HomeAssistantConfig(discovery=True, min_interval=timedelta(seconds=10))
    wakeups = HaWakeups(cfg.birth_topic)
    broker, view = FakeBroker(wakeups), View("cloud")
    ha = HaDiscovery(
        cfg,
        node="hall.pi",
        spool=spool,
        sinks=[view],
        publisher=broker,
        wakeups=wakeups,
        wall=lambda: WALL,
    )
    unsubscribe = spool.on_change(ha._on_change)  # what start() subscribes, minus the thread
    yield Rig(ha, broker, spool, view)
    unsubscribe()
    spool.close()


def render(template: str, payload: bytes) -> str:
    """A value template rendered as Home Assistant's MQTT integration does: ``value`` is the
    payload, ``value_json`` the payload parsed, in Jinja's sandbox."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    return env.from_string(template).render(value=payload.decode(), value_json=json.loads(payload))


def test_the_device_config_follows_the_discovery_conventions(rig: Rig) -> None:
    rig.broker.connect()
    assert rig.ha.step(0.0) is None
    topic, payload, retained = rig.broker.sent[0]
    assert (topic, retained) == (CONFIG_TOPIC, True)
    config = json.loads(payload)
    assert config["device"] == {
        "identifiers": ["relay_hall_pi"],
        "name": "relay hall.pi",
        "model": "relay event relay",
        "sw_version": config["origin"]["sw_version"],
    }
    assert config["origin"]["name"] == "relay"
    assert config["availability_topic"] == "relay/hall.pi/status"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    components = config["components"]
    assert sorted(components) == sorted(f"relay_hall_pi_cloud_{e}" for e in ENTITIES)
    for key, component in components.items():
        assert component["unique_id"] == key  # from node and sink names only: stable
        assert component["state_topic"] == STATE_TOPIC
        assert component["entity_category"] == "diagnostic"
        assert component["name"].startswith("cloud ")
    depth, age, last, connected = (
        components[f"relay_hall_pi_cloud_{e}"]
        for e in ("depth", "oldest_age", "last_delivery", "connected")
    )
    assert depth["platform"] == "sensor" and depth["state_class"] == "measurement"
    assert (age["device_class"], age["unit_of_measurement"]) == ("duration", "s")
    assert last["device_class"] == "timestamp"
    assert (connected["platform"], connected["device_class"]) == ("binary_sensor", "connectivity")
    assert connected["json_attributes_topic"] == STATE_TOPIC


def test_the_templates_render_what_home_assistant_expects(rig: Rig) -> None:
    rig.broker.connect()
    rig.ha.step(0.0)
    components = json.loads(rig.broker.sent[0][1])["components"]

    def values(state: bytes) -> dict[str, str]:
        return {
            key.rsplit("cloud_", 1)[1]: render(c["value_template"], state)
            for key, c in components.items()
        }

    # Before any attempt: "None" is Home Assistant's "unknown".
    first = rig.broker.sent[1][1]
    assert values(first) == {
        "depth": "0",
        "dead_letters": "0",
        "oldest_age": "0",
        "last_delivery": "None",
        "connected": "None",
    }
    rig.put()
    rig.view.connected = False
    rig.ha.step(10.0)
    failing = rig.broker.sent[-1][1]
    assert values(failing)["connected"] == "OFF" and values(failing)["depth"] == "1"
    rig.deliver_all()
    rig.ha.step(20.0)
    assert values(rig.broker.sent[-1][1]) == {
        "depth": "0",
        "dead_letters": "0",
        "oldest_age": "0",
        "last_delivery": "2027-01-15T08:00:00+00:00",
        "connected": "ON",
    }
    attributes = components["relay_hall_pi_cloud_connected"]["json_attributes_template"]
    assert json.loads(render(attributes, failing)) == {"last_error": None, "attempts": 0}


def test_states_are_rate_limited_and_an_idle_relay_publishes_nothing(rig: Rig) -> None:
    rig.broker.connect()
    assert rig.ha.step(0.0) is None  # config and state; nothing waits: no timer
    assert rig.broker.take() == [CONFIG_TOPIC, STATE_TOPIC]
    rig.put()
    assert rig.ha.step(1.0) == pytest.approx(9.0)  # changed, but published 1s ago
    assert rig.broker.take() == []
    assert rig.ha.step(10.0) == pytest.approx(10.0)  # a backlog: look again in 10s
    assert rig.broker.take() == [STATE_TOPIC]
    rig.put()
    assert rig.ha.step(15.0) == pytest.approx(5.0)
    rig.deliver_all()
    assert rig.ha.step(20.0) is None  # caught up: back to sleep until a change
    assert rig.broker.states()[-1]["depth"] == 0
    assert rig.broker.take() == [STATE_TOPIC]
    assert rig.ha.step(1000.0) is None and rig.broker.take() == []


def test_a_change_that_leaves_the_state_as_it_was_publishes_nothing(rig: Rig) -> None:
    rig.broker.connect()
    rig.ha.step(0.0)
    rig.put()
    rig.deliver_all()
    rig.ha.step(30.0)
    rig.broker.take()
    rig.put()
    rig.deliver_all()  # same depth, and the view's fake clock gives the same time
    assert rig.ha.step(60.0) is None
    assert rig.broker.take() == []


def test_home_assistant_coming_online_gets_everything_again(rig: Rig) -> None:
    rig.broker.connect()
    rig.ha.step(0.0)
    rig.broker.take()
    birth = rig.broker.birth
    birth(b"offline")  # its last will: nothing to do
    assert rig.ha.step(1.0) is None and rig.broker.take() == []
    birth(b"online")
    assert rig.ha.step(2.0) is None
    assert rig.broker.take() == [CONFIG_TOPIC, STATE_TOPIC]  # unchanged, sent anyway


def test_while_disconnected_nothing_is_retried_until_the_next_connection(rig: Rig) -> None:
    rig.broker.up = False
    rig.broker.connected()  # paho said connected, and the link dropped again
    assert rig.ha.step(0.0) is None  # no timer: the next connection announces
    assert rig.ha.last_error == "not connected to the MQTT broker"
    rig.broker.connect()
    assert rig.ha.step(1.0) is None
    assert rig.broker.take() == [CONFIG_TOPIC, STATE_TOPIC]
    assert rig.ha.last_error is None


# ------------------------------------------------------------------ against Mosquitto


class Watcher:
    """A plain paho subscriber that keeps every message it receives."""

    def __init__(self, *filters: str) -> None:
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("watch-"))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", 1883)
        self.client.subscribe([(f, 1) for f in filters])
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def on(self, topic: str) -> list[tuple[bytes, bool, float]]:
        return [(p, r, t) for top, p, r, t in list(self.messages) if top == topic]

    def states(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p, _, _ in self.on(topic)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def switches(ha: HaDiscovery) -> int:
    """Context switches of the discovery thread so far: each wake-up is one."""
    with open(f"/proc/self/task/{ha._thread.native_id}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)


def settled(ha: HaDiscovery, quiet: float = 0.5, timeout: float = 10.0) -> int:
    """The discovery thread's context switches once none came for ``quiet`` seconds."""
    looks: list[int] = []  # the count at each look, ``quiet`` seconds apart

    def unchanged_since_the_last_look() -> bool:
        looks.append(switches(ha))
        return len(looks) > 1 and looks[-1] == looks[-2]

    wait_until(
        unchanged_since_the_last_look,
        timeout,
        f"the discovery thread to go quiet for {quiet}s",
        interval=quiet,
    )
    return looks[-1]


def clear_retained(*topics: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("clean-"))
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for topic in topics:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


@pytest.mark.broker
def test_with_real_mosquitto(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    need_service("Mosquitto", 1883)
    node, prefix = unique("ha-node-"), unique("hatest-")
    config_topic = f"{prefix}/device/relay_{node}/config"  # the node name is safe as it is
    state_topic, status_topic = f"relay/{node}/sinks/cloud", f"relay/{node}/status"
    monkeypatch.setenv("RELAY_NODE", node)
    down = threading.Event()
    down.set()
    with RemoteServer(lambda r, n: Reply(503) if down.is_set() else Reply(200)) as server:
        cfg = write_config(
            toml.mqtt(1883, client_id=unique("relay-ha-")),
            toml.homeassistant(
                discovery=True,
                discovery_prefix=prefix,
                birth_topic=f"{prefix}/status",
                min_interval="1s",
            ),
            toml.http_sink(server.url, retry_initial="100ms", retry_max="300ms"),
        )
        watcher = Watcher(f"{prefix}/#", f"relay/{node}/#")
        try:
            with running_agent(cfg) as agent:
                wait_until(lambda: watcher.states(state_topic), 10, "the first state")
                [(config, _, _)] = watcher.on(config_topic)
                components = json.loads(config)["components"]
                assert len(components) == 5 + 1  # the sink's, and the broker's drops
                assert json.loads(config)["availability_topic"] == status_topic
                assert [p for p, _, _ in watcher.on(status_topic)][-1] == b"online"
                first = watcher.states(state_topic)[0]
                assert (first["depth"], first["connected"], first["last_delivery"]) == (
                    0,
                    None,
                    None,
                )

                # The sink refuses (503): the backlog shows, and the sink as not connected.
                for i in range(3):
                    spool_of(agent).put(Event.new(node=node, source="push", name=f"e{i}"))
                wait_until(
                    lambda: any(
                        s["depth"] == 3 and s["connected"] is False
                        for s in watcher.states(state_topic)
                    ),
                    10,
                    "a state with the backlog",
                )
                down.clear()  # the sink recovers: the backlog drains to 0, delivered
                wait_until(
                    lambda: watcher.states(state_topic)[-1]["depth"] == 0,
                    10,
                    "a state with the backlog gone",
                )
                last = watcher.states(state_topic)[-1]
                assert last["connected"] is True and last["last_delivery"] is not None
                assert len(server.accepted()) == 3

                # At most one state a second (margin for delivery jitter), and none once idle.
                times = [t for _, _, t in watcher.on(state_topic)]
                assert all(b - a > 0.8 for a, b in itertools.pairwise(times)), times
                [ha] = [c for c in agent.components if isinstance(c, HaDiscovery)]
                # The state arrives here while its thread may still be finishing that round
                # (a switch or two on a loaded machine): idle is from when it has gone quiet.
                before = settled(ha)
                time.sleep(2.5)
                assert len(watcher.on(state_topic)) == len(times), "an idle relay published"
                assert switches(ha) == before, "the idle thread woke up"

                # Home Assistant restarts: its birth message brings the config again.
                configs = len(watcher.on(config_topic))
                watcher.client.publish(f"{prefix}/status", b"online", qos=0)
                wait_until(lambda: len(watcher.on(config_topic)) > configs, 10, "the re-announce")

            # A restart announces the same config (the same ids), and a Home Assistant that
            # subscribes later finds it and the state retained.
            configs = len(watcher.on(config_topic))
            with running_agent(cfg):
                wait_until(lambda: len(watcher.on(config_topic)) > configs, 10, "the config again")
                assert watcher.on(config_topic)[-1][0] == config
                late = Watcher(config_topic, state_topic)
                try:
                    wait_until(
                        lambda: late.on(config_topic) and late.on(state_topic), 10, "retained"
                    )
                    assert late.on(config_topic)[0][:2] == (config, True)
                    assert late.on(state_topic)[0][1], "the state is not retained"
                finally:
                    late.close()
        finally:
            watcher.close()
            clear_retained(config_topic, state_topic, status_topic)


@pytest.mark.broker
def test_a_source_on_the_birth_topic_still_spools_it(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """paho hands a message to the birth listener only; one an MQTT source also subscribed
    to must reach the spool as well (and be acked from there)."""
    need_service("Mosquitto", 1883)
    node, home, prefix = unique("ha-node-"), unique("hatest/"), unique("hatest-")
    config_topic = f"{prefix}/device/relay_{node}/config"
    monkeypatch.setenv("RELAY_NODE", node)
    cfg = write_config(
        toml.mqtt(1883, client_id=unique("relay-ha-")),
        toml.homeassistant(discovery=True, discovery_prefix=prefix, birth_topic=f"{home}/status"),
        toml.mqtt_source(f"{home}/#"),
        toml.http_sink("http://127.0.0.1:9/"),
    )
    watcher = Watcher(config_topic)
    try:
        with running_agent(cfg) as agent, Publisher() as pub:
            wait_until(lambda: watcher.on(config_topic), 10, "the config")
            pub.wait([pub.publish(f"{home}/status", "online", qos=1)])
            wait_until(lambda: len(watcher.on(config_topic)) == 2, 10, "the re-announce")
            wait_until(lambda: spool_of(agent).stats().rows == 1, 10, "the event")
        [event] = spooled(agent.settings.state_dir)
        assert (event["name"], event["payload"]) == (f"{home}/status", "online")
    finally:
        watcher.close()
        clear_retained(config_topic, f"relay/{node}/sinks/cloud", f"relay/{node}/status")


def test_ids_come_from_the_names_only() -> None:
    cfg = HomeAssistantConfig(discovery=True)
    a = discovery_config(Topics.of(cfg, "hall pi"), "hall pi", ["cloud", "bus.1"], "s")
    b = discovery_config(Topics.of(cfg, "hall pi"), "hall pi", ["cloud", "bus.1"], "s")
    assert a == b
    assert "relay_hall_pi_bus_1_depth" in a["components"]


def test_bad_settings_are_one_line_each(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[homeassistant]\ndiscovery = true\ndiscovery_prefix = "ha/#"\nmin_interval = "100ms"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "homeassistant.discovery_prefix: must be a topic name, without wildcards (+, #)",
        'homeassistant.min_interval: must be at least "1s"',
    ]
