"""The MQTT source against a real Mosquitto: the shared one on 1883, and private instances on
free ports where a test stops, restarts or floods the broker."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from relay.agent import Agent
from relay.config import MqttConfig, MqttSourceConfig
from relay.mqtt.connection import MqttConnection
from relay.sources.mqtt import MqttSource
from relay.spool import INGEST_REJECTS, Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.common import RELAY, need_service
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import Publisher, spooled, unique
from tests.helpers.wait import wait_until


@pytest.fixture
def broker() -> tuple[str, int]:
    need_service("Mosquitto", 1883)
    return "127.0.0.1", 1883


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path / "mosquitto", extra="max_queued_messages 100000\n") as b:
        yield b


def connection_of(agent: Agent) -> MqttConnection:
    return next(c for c in agent.components if isinstance(c, MqttConnection))


def subscribed(agent: Agent) -> None:
    """Wait until the broker confirmed the source's subscriptions: what is published
    before that has no subscriber to be queued for."""
    wait_until(connection_of(agent).subscribed.is_set, 10, "the subscription")


def numbers(state_dir: Path, topic: str) -> list[int]:
    """The numbers spooled from under ``topic``, in spool order (markers left out)."""
    return [
        e["payload"]["n"]
        for e in spooled(state_dir)
        if e["name"].startswith(topic) and e["name"] != marker_of(topic)
    ]


def marker_of(topic: str) -> str:
    return f"{topic}/marker"


def markers(state_dir: Path, topic: str) -> int:
    return sum(e["name"] == marker_of(topic) for e in spooled(state_dir))


def marker_spooled(pub: Publisher, topic: str, state_dir: Path) -> None:
    """Publish a marker after everything else and wait until it is spooled: MQTT keeps the
    order of one session's messages, so whatever the broker had for relay before it (say, a
    message sent again) is spooled by then too. Instead of waiting a while for nothing."""
    before = markers(state_dir, topic)
    pub.wait([pub.publish(marker_of(topic), b"marker")])
    wait_until(lambda: markers(state_dir, topic) > before, 10, "the marker")


def publish_numbered(pub: Publisher, topic: str, ns: range, pause: float = 0.0) -> list[int]:
    mids = []
    for n in ns:
        mids.append(pub.publish(f"{topic}/seq", json.dumps({"n": n})))
        if pause:
            time.sleep(pause)
    return mids


def test_2000_messages_all_spooled_once_in_order(
    broker: tuple[str, int], write_config: Callable[..., Path], state_dir: Path
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid))
    with running_agent(cfg) as agent, Publisher(*broker) as pub:
        subscribed(agent)
        # Paced: the shared Mosquitto keeps at most 1000 messages queued for a subscriber
        # (max_queued_messages) and silently drops the rest when a burst outruns it.
        pub.wait(publish_numbered(pub, topic, range(2000), pause=0.0005))
        try:
            wait_until(lambda: len(numbers(state_dir, topic)) >= 2000, 30, "2000 events")
        except AssertionError:
            got = numbers(state_dir, topic)
            missing = sorted(set(range(2000)) - set(got))
            raise AssertionError(f"{len(got)} spooled, missing {missing[:10]}...") from None
    assert numbers(state_dir, topic) == list(range(2000))
    event = spooled(state_dir)[0]
    assert (event["source"], event["name"], event["node"]) == ("mqtt", f"{topic}/seq", "test-node")
    # Every message was acknowledged: a restart with the same session receives nothing again.
    with running_agent(cfg), Publisher(*broker) as pub:
        marker_spooled(pub, topic, state_dir)
    assert numbers(state_dir, topic) == list(range(2000))
    assert [e["name"] for e in spooled(state_dir)][2000:] == [marker_of(topic)]


def test_the_log_says_connected_before_what_the_session_kept(
    broker: tuple[str, int],
    write_config: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a restart the broker still holds relay's session and its subscriptions: the log
    says "connected (session resumed)" and then "subscribed to ... (kept in the broker's
    session)", in that order (the subscription line came first)."""
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid))
    caplog.set_level(logging.INFO, logger="relay")
    for run in ("new", "resumed"):
        caplog.clear()
        with running_agent(cfg) as agent:
            subscribed(agent)
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("relay.mqtt")]
        connected = lines.index(f"mqtt: connected to {broker[0]}:{broker[1]} (session {run})")
        [subscription] = [i for i, line in enumerate(lines) if "subscribed to" in line]
        assert connected < subscription, lines
    assert lines[subscription].startswith(f"mqtt: subscribed to {topic}/#")
    assert lines[subscription].endswith("(kept in the broker's session)")


def test_messages_sent_while_stopped_arrive_after_start(
    broker: tuple[str, int], write_config: Callable[..., Path], state_dir: Path
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid))
    with running_agent(cfg) as agent:
        subscribed(agent)
    with Publisher(*broker) as pub:
        pub.wait(publish_numbered(pub, topic, range(500)))
    with running_agent(cfg):
        wait_until(lambda: len(numbers(state_dir, topic)) >= 500, 20, "the 500 queued messages")
    assert numbers(state_dir, topic) == list(range(500))


def test_mqtt5_session_keeps_messages_while_stopped(
    broker: tuple[str, int], write_config: Callable[..., Path], state_dir: Path
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(
        toml.mqtt_in(broker[1], topic, client_id=cid, protocol="5", session_expiry="1h")
    )
    with running_agent(cfg) as agent:
        subscribed(agent)
    with Publisher(*broker) as pub:
        pub.wait(publish_numbered(pub, topic, range(50)))
    with running_agent(cfg):
        wait_until(lambda: len(numbers(state_dir, topic)) >= 50, 20)
    assert numbers(state_dir, topic) == list(range(50))


def test_availability_topic_online_then_offline(
    broker: tuple[str, int], write_config: Callable[..., Path]
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    status = f"relay/{unique('node-')}/status"
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid, status_topic=status))
    seen: list[tuple[bytes, bool]] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: seen.append((m.payload, m.retain))
    watcher.connect(*broker)
    watcher.subscribe(status, qos=1)
    watcher.loop_start()
    try:
        with running_agent(cfg):
            wait_until(lambda: any(p == b"online" for p, _ in seen), 10, "online")
        wait_until(lambda: seen[-1][0] == b"offline", 10, "offline")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    # A newcomer gets the retained state.
    late: list[bytes] = []
    other = mqtt.Client(CallbackAPIVersion.VERSION2)
    other.on_message = lambda c, u, m: late.append(m.payload)
    other.connect(*broker)
    other.subscribe(status)
    other.loop_start()
    try:
        wait_until(lambda: late == [b"offline"], 5, "the retained status")
    finally:
        other.loop_stop()
        other.publish(status, b"", retain=True)  # clean up the retained message
        other.disconnect()


class _Listener:
    """An observer that only counts what arrives on its topic."""

    resubscribe = False

    def __init__(self, topic: str) -> None:
        self.topic, self.got = topic, 0

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topic, 0)]

    def on_connect(self, session: object) -> None:
        pass

    def on_message(self, msg: object) -> None:
        self.got += 1

    def settle(self) -> None:
        pass


def test_stop_writes_offline_and_disconnect_before_it_returns(broker: tuple[str, int]) -> None:
    """An in-process stop has no process exit to close the socket (and fire the will): the
    network thread must not leave before it has written stop()'s "offline" and DISCONNECT,
    also while it is busy reading (here a stream of messages; for the agent, the broker's
    retained $SYS figures just after it subscribed)."""
    prefix, busy = unique("relay/stops-"), unique("relaytest/busy-")
    seen: dict[str, list[bytes]] = {}
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: seen.setdefault(m.topic, []).append(m.payload)
    watcher.connect(*broker)
    watcher.subscribe(f"{prefix}/+", qos=1)
    watcher.loop_start()
    flooding = threading.Event()

    def flood() -> None:
        with Publisher(*broker) as pub:
            while flooding.is_set():
                pub.publish(busy, b"x", qos=0)
                time.sleep(0.0005)

    flooding.set()
    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        for i in range(40):
            status, listener = f"{prefix}/{i}", _Listener(busy)
            cfg = MqttConfig(host=broker[0], port=broker[1], status_topic=status)
            connection = MqttConnection(cfg, node=unique("stop-"), observers=[listener])
            connection.start()
            said = seen.setdefault(status, [])
            wait_until(lambda s=said: s == [b"online"], 10, f"online #{i}")
            wait_until(lambda got=listener: got.got > 0, 10, f"the stream #{i}")
            connection.stop()
            wait_until(lambda s=said: s[-1] == b"offline", 5, f"offline #{i}")
    finally:
        flooding.clear()
        flooder.join()
        for topic in seen:
            watcher.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        watcher.loop_stop()
        watcher.disconnect()


def _agent_proc(
    cfg: Path, env: dict[str, str], until: str = "relay started"
) -> subprocess.Popen[str]:
    """`relay run` as a subprocess, once its stderr has shown ``until``."""
    proc = subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if until in line:
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining it
    return proc


@pytest.mark.slow
def test_kill_9_while_publishing_loses_nothing(
    private_broker: PrivateMosquitto,
    write_config: Callable[..., Path],
    state_dir: Path,
    relay_env: dict[str, str],
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(private_broker.port, topic, client_id=cid))
    total, rng = 5000, random.Random()
    proc = _agent_proc(cfg, relay_env, until="mqtt: subscribed")
    with Publisher(private_broker.host, private_broker.port) as pub:
        mids: list[int] = []
        publisher = threading.Thread(
            target=lambda: [
                mids.append(pub.publish(f"{topic}/seq", json.dumps({"n": n}))) or time.sleep(0.0015)
                for n in range(total)
            ]
        )
        publisher.start()
        try:
            for _ in range(5):
                time.sleep(rng.uniform(0.3, 1.2))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stderr.close()  # type: ignore[union-attr]
                proc = _agent_proc(cfg, relay_env)
            publisher.join()
            pub.wait(mids)
            wait_until(lambda: len(set(numbers(state_dir, topic))) == total, 60, "every message")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            if proc.stderr:
                proc.stderr.close()
    got = numbers(state_dir, topic)
    first_seen = list(dict.fromkeys(got))
    assert sorted(first_seen) == list(range(total)), "a message was lost"
    assert first_seen == list(range(total)), "order by first arrival broken"
    print(f"5 kills in a stream of {total}: {len(got) - total} duplicates (unacked at a kill)")


@pytest.mark.slow
def test_broker_restart_mid_stream(
    private_broker: PrivateMosquitto, write_config: Callable[..., Path], state_dir: Path
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(private_broker.port, topic, client_id=cid))
    with running_agent(cfg) as agent:
        source = connection_of(agent)
        subscribed(agent)
        with Publisher(private_broker.host, private_broker.port) as pub:
            pub.wait(publish_numbered(pub, topic, range(1000)))
        private_broker.restart()  # SIGTERM: mosquitto saves its persistence file first
        with Publisher(private_broker.host, private_broker.port) as pub:
            pub.wait(publish_numbered(pub, topic, range(1000, 2000)))
        wait_until(lambda: len(set(numbers(state_dir, topic))) >= 2000, 60, "ingest to resume")
        assert source.connected.is_set()  # type: ignore[attr-defined]
    got = list(dict.fromkeys(numbers(state_dir, topic)))
    assert got == list(range(2000))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_bad_payloads_do_not_hurt(
    broker: tuple[str, int],
    write_config: Callable[..., Path],
    state_dir: Path,
    relay_env: dict[str, str],
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid))
    proc = _agent_proc(cfg, relay_env, until="mqtt: subscribed")
    try:
        with Publisher(*broker) as pub:
            pub.wait([pub.publish(f"{topic}/warmup", b"{}")])
            wait_until(lambda: len(spooled(state_dir)) == 1, 10)
            rss_before = _rss_kb(proc.pid)
            rng = random.Random(5)
            mids = [
                pub.publish(f"{topic}/junk", rng.randbytes(rng.randint(0, 300)))
                for _ in range(1000)
            ]
            mids.append(pub.publish(f"{topic}/big", os.urandom(10 * 1024 * 1024)))
            mids.append(pub.publish(f"{topic}/binary", b"\xff\xfe\x00 not utf-8"))
            pub.wait(mids)
            wait_until(lambda: len(spooled(state_dir)) == 1002, 20, "the junk to be spooled")
            sent = time.monotonic()
            pub.wait([pub.publish(f"{topic}/good", b'{"n": 1}')])
            wait_until(
                lambda: spooled(state_dir)[-1]["name"] == f"{topic}/good",
                1.0,
                "the next good message within 1 s",
            )
            latency = time.monotonic() - sent
            rss_growth = (_rss_kb(proc.pid) - rss_before) / 1024
        assert proc.poll() is None, "the agent died"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()  # type: ignore[union-attr]
    print(
        f"good message spooled {1000 * latency:.1f} ms after its PUBACK; RSS +{rss_growth:.1f} MB"
    )
    assert rss_growth < 50
    events = spooled(state_dir)
    binary = next(e for e in events if e["name"].endswith("/binary"))
    assert binary["payload"] == {"base64": "//4AIG5vdCB1dGYtOA=="}
    with Spool.open(state_dir) as spool:
        [big] = spool.dead_letters(INGEST_REJECTS)
    assert big.reason == f"payload of {10 * 1024 * 1024} bytes over max_payload (262144)"
    detail = json.loads(big.body)["payload"]
    assert detail["size"] == 10 * 1024 * 1024 and len(detail["sha256"]) == 64


def test_topic_that_is_not_utf8_is_dead_lettered(tmp_path: Path) -> None:
    """Mosquitto refuses such topics itself, so this one is fed at paho's own seam."""
    with Spool.open(tmp_path, durability="memory") as spool:
        source = MqttSource([MqttSourceConfig(type="mqtt", topics=["#"])], spool, node="n")
        connection = MqttConnection(MqttConfig(), node="n", consumers=[source])
        connection._on_connect(
            connection._client,
            None,
            mqtt.ConnectFlags(False),
            ReasonCode(PacketTypes.CONNACK),
            None,
        )
        msg = mqtt.MQTTMessage(mid=0, topic=b"home/\xffbad")
        msg.payload = b"x"
        connection._on_message(connection._client, None, msg)
        spool.sync()
        [dl] = spool.dead_letters(INGEST_REJECTS)
    assert dl.reason == "topic is not UTF-8"
    assert json.loads(dl.body)["name"] == b"home/\xffbad".hex()


def test_spool_full_holds_messages_at_the_broker(
    private_broker: PrivateMosquitto, write_config: Callable[..., Path], state_dir: Path
) -> None:
    topic, cid = unique("relaytest/"), unique("relay-test-")
    down = {"on": True}
    with RemoteServer(lambda r, n: Reply(503 if down["on"] else 200)) as remote:
        cfg = write_config(
            toml.spool(max_size="12KB"),
            toml.http_sink(remote.url, retry_initial="100ms", retry_max="300ms"),
            toml.mqtt_in(private_broker.port, topic, client_id=cid),
        )
        with (
            running_agent(cfg) as agent,
            Publisher(private_broker.host, private_broker.port) as pub,
        ):
            subscribed(agent)  # a new session: what is published before SUBACK goes nowhere
            pub.wait(publish_numbered(pub, topic, range(200)))  # ~200 B each: ~4x the cap
            wait_until(
                lambda: "spool full" in (connection_of(agent).last_error or ""),
                20,
                "the source to notice the full spool",
            )
            held = len(set(numbers(state_dir, topic)))
            assert 0 < held < 200
            down["on"] = False  # the sink recovers, the spool drains, ingest resumes
            wait_until(
                lambda: len({e["payload"]["n"] for e in remote.accepted()}) == 200,
                60,
                "all 200 delivered",
            )
        delivered = list(dict.fromkeys(e["payload"]["n"] for e in remote.accepted()))
    assert sorted(delivered) == list(range(200))
    print(f"{held} of 200 fit before the spool was full; all 200 delivered after it drained")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_restart_does_not_ingest_retained_messages_again(
    protocol: str, broker: tuple[str, int], write_config: Callable[..., Path], state_dir: Path
) -> None:
    """A retained state (a door sensor's last "open") is one event, not one per restart:
    with the session kept, relay does not subscribe again (that resends retained messages);
    with other filters it does, and gets the retained messages of the new filter (and, in
    MQTT 3.1.1, those of the old ones again: a changed config may repeat them once)."""
    topic, cid = unique("relaytest/"), unique("relay-test-")
    session = {"protocol": protocol, "session_expiry": "1h"}
    cfg = write_config(toml.mqtt_in(broker[1], topic, client_id=cid, **session))
    with Publisher(*broker) as pub:
        pub.wait([pub.publish(f"{topic}/door", "open", retain=True)])
        pub.wait([pub.publish(f"{topic}-other/lamp", "on", retain=True)])
    try:
        for _ in range(3):
            with running_agent(cfg) as agent, Publisher(*broker) as pub:
                subscribed(agent)
                wait_until(
                    lambda: any(e["name"] == f"{topic}/door" for e in spooled(state_dir)), 10
                )
                marker_spooled(pub, topic, state_dir)  # a resent retained one came before
        # The door once, and nothing between the markers of the three runs.
        assert [e["name"] for e in spooled(state_dir)] == [f"{topic}/door"] + [marker_of(topic)] * 3
        # Another filter: subscribed again, and its retained message arrives.
        cfg = write_config(
            toml.mqtt_in(broker[1], topic, client_id=cid, **session),
            toml.mqtt_source(f"{topic}-other/#", qos=1),
        )
        with running_agent(cfg) as agent, Publisher(*broker) as pub:
            subscribed(agent)
            wait_until(
                lambda: any(e["name"] == f"{topic}-other/lamp" for e in spooled(state_dir)),
                10,
                "the new filter's retained",
            )
            marker_spooled(pub, topic, state_dir)
        names = [e["name"] for e in spooled(state_dir)]
        assert names[0] == f"{topic}/door" and names.count(f"{topic}-other/lamp") == 1
    finally:
        with Publisher(*broker) as pub:  # clear the retained messages
            pub.wait([pub.publish(f"{topic}/door", "", retain=True)])
            pub.wait([pub.publish(f"{topic}-other/lamp", "", retain=True)])
