"""The private-broker helpers start, restart and clean up real brokers, keeping their data.

Needs the broker binaries; without them the tests skip (or fail under
``RELAY_REQUIRE_BROKERS=1``, like every broker-backed test).
"""

from __future__ import annotations

import queue
import socket
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pika
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.brokers import (
    MOSQUITTO,
    REDIS_SERVER,
    PrivateMosquitto,
    PrivateRabbit,
    PrivateRedis,
    binary_missing,
    free_ports,
    port_accepts,
    rabbit_unusable,
)
from tests.helpers.common import REQUIRE_BROKERS

pytestmark = pytest.mark.broker

# The shared services these helpers must never disturb.
SHARED_PORTS = {"mosquitto": 1883, "rabbitmq": 5672, "redis": 6379}


def require(reason: str | None) -> None:
    """Skip when ``reason`` says the broker cannot run here (fail under CI)."""
    if reason is None:
        return
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason} (RELAY_REQUIRE_BROKERS=1: broker tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shared_up() -> dict[str, bool]:
    """Which shared services were up before this module's tests ran."""
    return {name: port_accepts("127.0.0.1", port) for name, port in SHARED_PORTS.items()}


def assert_shared_untouched(before: dict[str, bool]) -> None:
    for name, was_up in before.items():
        if was_up:
            assert port_accepts("127.0.0.1", SHARED_PORTS[name]), f"shared {name} went down"


# -- MQTT helpers ---------------------------------------------------------------------


def publish_retained(host: str, port: int, topic: str, payload: bytes) -> None:
    """Publish a retained QoS 1 message and wait for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def read_retained(host: str, port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    """Subscribe to ``topic``; return the retained payload, or None if none arrives."""
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload))
    client.connect(host, port)
    client.loop_start()
    try:
        return got.get(timeout=timeout)
    except queue.Empty:
        return None
    finally:
        client.disconnect()
        client.loop_stop()


# -- free ports -------------------------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not set(ports) & set(SHARED_PORTS.values())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


# -- Mosquitto -----------------------------------------------------------------------


def test_mosquitto_restart_keeps_port_and_retained_messages(
    tmp_path: Path, shared_up: dict[str, bool]
) -> None:
    require(binary_missing(MOSQUITTO))
    with PrivateMosquitto(tmp_path, extra="max_queued_messages 100000") as broker:
        port = broker.port
        with socket.create_connection((broker.host, broker.port), timeout=2):
            pass
        publish_retained(broker.host, broker.port, "relay/test", b"before restart")

        broker.restart()

        assert broker.port == port
        assert port_accepts(broker.host, broker.port)
        assert read_retained(broker.host, broker.port, "relay/test") == b"before restart"
        pid = broker.pid
    assert pid is not None and not broker.running
    assert not port_accepts("127.0.0.1", port)
    assert_shared_untouched(shared_up)


def test_mosquitto_save_then_kill_keeps_the_saved_state(tmp_path: Path) -> None:
    require(binary_missing(MOSQUITTO))
    with PrivateMosquitto(tmp_path) as broker:
        publish_retained(broker.host, broker.port, "relay/saved", b"saved")
        broker.save()
        assert broker.db_file.exists()
        publish_retained(broker.host, broker.port, "relay/unsaved", b"lost")

        broker.kill()  # no exit-time save: only what save() wrote survives
        broker.start()

        assert read_retained(broker.host, broker.port, "relay/saved") == b"saved"
        assert read_retained(broker.host, broker.port, "relay/unsaved", timeout=0.5) is None


def test_mosquitto_start_failure_reports_the_log(tmp_path: Path) -> None:
    require(binary_missing(MOSQUITTO))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = PrivateMosquitto(tmp_path, port=squatter.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="did not start") as excinfo:
                broker.start()
        finally:
            broker.close()
    # The message carries the broker's own explanation from its log.
    assert "Address already in use" in str(excinfo.value)
    assert not broker.running


# -- Redis --------------------------------------------------------------------------


def test_redis_restart_and_kill_keep_appendonly_data(
    tmp_path: Path, shared_up: dict[str, bool]
) -> None:
    require(binary_missing(REDIS_SERVER))
    # appendfsync always: every acknowledged write is on disk, so even kill() keeps it.
    with PrivateRedis(tmp_path, extra_args=["--appendfsync", "always"]) as server:
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "before restart")

        server.restart()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"before restart"
            client.set("k2", "before kill")

        server.kill()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k2") == b"before kill"
    assert not server.running
    assert_shared_untouched(shared_up)


# -- RabbitMQ -----------------------------------------------------------------------


@pytest.mark.slow
def test_rabbit_restart_keeps_durable_queue_and_persistent_message(
    shared_up: dict[str, bool],
) -> None:
    require(rabbit_unusable())
    with PrivateRabbit() as rabbit:
        assert rabbit.port != SHARED_PORTS["rabbitmq"]
        workdir = rabbit.workdir
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.queue_declare("relay.durable", durable=True)
            channel.basic_publish(
                exchange="",
                routing_key="relay.durable",
                body=b"survives restart",
                properties=pika.BasicProperties(delivery_mode=2),  # 2 = persistent
            )
        finally:
            conn.close()

        rabbit.restart()

        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            method, _props, body = conn.channel().basic_get("relay.durable", auto_ack=True)
        finally:
            conn.close()
        assert method is not None, "the persistent message was lost by the restart"
        assert cast(bytes, body) == b"survives restart"  # types-pika says str; it is bytes
    # close() left no process of the private node behind and removed its directory.
    assert not rabbit.running
    assert not workdir.exists()
    assert_shared_untouched(shared_up)


@pytest.mark.slow
def test_rabbit_start_moves_off_ports_taken_meanwhile() -> None:
    """Under pytest -n another worker can take a port between its choice and the node's
    bind; the node then exits at once (seen in CI), and start() tries fresh ports."""
    require(rabbit_unusable())
    rabbit = PrivateRabbit()
    taken = []
    for port in (rabbit.port, rabbit.dist_port):
        sock = socket.socket()
        sock.bind(("127.0.0.1" if port == rabbit.port else "0.0.0.0", port))
        sock.listen()
        taken.append(sock)
    chosen = (rabbit.port, rabbit.dist_port)
    try:
        rabbit.start()
        assert rabbit.port != chosen[0] and rabbit.dist_port != chosen[1]
        pika.BlockingConnection(pika.URLParameters(rabbit.url)).close()
    finally:
        rabbit.close()
        for sock in taken:
            sock.close()
