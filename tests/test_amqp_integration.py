"""The AMQP sink end to end: the real agent and spool against the real RabbitMQ on
127.0.0.1:5672, and a private RabbitMQ node for the tests that stop or starve the broker."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from relay.config import AmqpSinkConfig
from relay.event import Event
from relay.sinks import amqp
from relay.sinks.amqp import AmqpSink
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent, spool_of
from tests.helpers.brokers import PrivateRabbit
from tests.helpers.common import RELAY, need_service, read_until, sink_status
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.wait import wait_until

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
FAST_RETRY = {"retry_initial": "50ms", "retry_max": "500ms"}

pytestmark = pytest.mark.broker


def sink_config(url: str, **keys: object) -> str:
    """The "bus" sink at ``url``, retrying fast unless ``keys`` say otherwise."""
    return toml.amqp_sink(url, **{**FAST_RETRY, **keys})


@dataclass(frozen=True)
class Message:
    message_id: str
    event: dict[str, Any]
    props: Any


class Broker:
    """The test's own look at a broker (a BlockingConnection, this thread only). Queues and
    exchanges it names are deleted at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.names: list[tuple[str, str]] = []

    def queue(self, *, bind: tuple[str, str] | None = None, **arguments: Any) -> str:
        """A durable queue made here (as an operator would)."""
        name = self.name("queue")
        self.ch.queue_declare(name, durable=True, arguments=arguments or None)
        if bind is not None:
            self.ch.queue_bind(name, *bind)
        return name

    def exchange(self) -> str:
        name = self.name("exchange")
        self.ch.exchange_declare(name, "direct", durable=True)
        return name

    def name(self, kind: str = "queue") -> str:
        """A fresh name for a queue or exchange, deleted at the end."""
        name = f"relay-test-{uuid.uuid4().hex[:10]}"
        self.names.append((kind, name))
        return name

    def depth(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)

    def get(self, queue: str) -> Message | None:
        method, props, body = self.ch.basic_get(queue, auto_ack=True)
        return None if method is None else Message(props.message_id, json.loads(body), props)

    def drain(self, queue: str) -> list[Message]:
        """Every message in ``queue``, in queue order."""
        out = []
        for method, props, body in self.ch.consume(queue, auto_ack=True, inactivity_timeout=0.5):
            if method is None:
                break
            out.append(Message(props.message_id, json.loads(body), props))
        self.ch.cancel()
        return out

    def reopen(self) -> None:
        """A new channel, after the broker closed this one (a refused declare or delete)."""
        if not self.ch.is_open:
            self.ch = self.conn.channel()

    def close(self) -> None:
        self.reopen()
        for kind, name in self.names:
            if kind == "queue":
                self.ch.queue_delete(name)
            else:
                self.ch.exchange_delete(name)
        self.conn.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    need_service("RabbitMQ", 5672)
    b = Broker(RABBIT)
    yield b
    b.close()


def put(spool: Spool, n: int, start: int = 0, name: str = "door opened") -> list[str]:
    events = [
        Event.new(node="test-node", source="test", name=name, payload={"n": start + i})
        for i in range(n)
    ]
    spool.put_many(events)
    return [e.id for e in events]


def check_delivery(messages: list[Message], ids: list[str]) -> int:
    """Every event arrived, in spool order by first arrival, each copy with its own id as
    message_id; returns the number of duplicates."""
    assert all(m.message_id == m.event["id"] for m in messages)
    first: dict[str, None] = {}
    for m in messages:
        first.setdefault(m.message_id)
    assert list(first) == ids, f"{len(set(ids) - set(first))} missing, or out of order"
    return len(messages) - len(ids)


def depth(agent: Any) -> int:
    return int(spool_of(agent).stats().sinks[0].depth)


# ------------------------------------------------------------------ delivery


def test_2000_events_arrive_once_each_in_order(
    broker: Broker, write_config: Callable[..., Path]
) -> None:
    queue = broker.name()  # the sink declares it
    cfg = write_config(sink_config(RABBIT, queue=queue))
    with running_agent(cfg) as agent:
        ids = []
        for i in range(0, 2000, 100):  # a stream, while the forwarder drains
            ids += put(spool_of(agent), 100, start=i)
        wait_until(lambda: depth(agent) == 0, 20, "the spool to drain")
    messages = broker.drain(queue)
    assert len(messages) == 2000 and check_delivery(messages, ids) == 0
    m = messages[0]
    assert (m.props.content_type, m.props.delivery_mode) == ("application/json", 2)
    assert m.props.headers == {"node": "test-node", "source": "test"}
    event_time = time.mktime(time.strptime(m.event["time"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(m.props.timestamp - (event_time - time.timezone)) <= 1
    assert [m.event["payload"]["n"] for m in messages] == list(range(2000))
    broker.ch.queue_declare(queue, durable=True)  # declared durable: a non-durable one says 406


def test_window_of_one(broker: Broker, write_config: Callable[..., Path]) -> None:
    queue = broker.name()
    cfg = write_config(sink_config(RABBIT, queue=queue, window=1))
    with running_agent(cfg) as agent:
        ids = put(spool_of(agent), 300)
        wait_until(lambda: depth(agent) == 0, 20, "the spool to drain")
    assert check_delivery(broker.drain(queue), ids) == 0


def test_exchange_and_routing_key(broker: Broker, write_config: Callable[..., Path]) -> None:
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "home.door"))
    cfg = write_config(sink_config(RABBIT, exchange=exchange, routing_key="home.door"))
    with running_agent(cfg) as agent:
        ids = put(spool_of(agent), 10)
        wait_until(lambda: depth(agent) == 0, 10)
    assert check_delivery(broker.drain(queue), ids) == 0


def test_an_existing_quorum_queue_is_used_as_it_is(
    broker: Broker, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    queue = broker.queue(**{"x-queue-type": "quorum"})  # made by the operator
    cfg = write_config(sink_config(RABBIT, queue=queue))
    with running_agent(cfg) as agent:
        ids = put(spool_of(agent), 50)
        wait_until(lambda: depth(agent) == 0, 10)
    assert check_delivery(broker.drain(queue), ids) == 0
    [warning] = [r.getMessage() for r in caplog.records if "exists with other" in r.getMessage()]
    assert "x-queue-type" in warning


@pytest.mark.parametrize("policy", ["dead-letter", "hold"])
def test_queue_deleted_mid_stream_nothing_is_lost(
    policy: str, broker: Broker, write_config: Callable[..., Path]
) -> None:
    """The exchange stops routing and the queue goes away mid-stream: events are
    dead-lettered (max_retries = 0) or held (retried), and flow again once it is back."""
    exchange = broker.exchange()
    queue = broker.queue(bind=(exchange, "door"))
    retries = 0 if policy == "dead-letter" else 10_000
    cfg = write_config(
        sink_config(RABBIT, exchange=exchange, routing_key="door", window=20, max_retries=retries)
    )
    with running_agent(cfg) as agent:
        spool = spool_of(agent)
        ids: list[str] = []

        def stream() -> None:
            for i in range(0, 600, 20):
                ids.extend(put(spool, 20, i))
                time.sleep(0.01)

        pusher = threading.Thread(target=stream)
        pusher.start()
        wait_until(lambda: spool.stats().sinks[0].delivered >= 100, 10, "a first delivery")
        # Mid-stream, the exchange stops routing, then the queue goes. In that order so that
        # the test can count: a message routed just before a queue_delete would be confirmed
        # and destroyed with the queue (the operator's loss, not relay's).
        broker.ch.queue_unbind(queue, exchange, "door")
        wait_until(lambda: "unroutable" in (spool.stats().sinks[0].last_error or ""), 10)
        consumed = broker.drain(queue)  # every routed event was confirmed before the return
        broker.ch.queue_delete(queue, if_empty=True)
        pusher.join()
        if policy == "dead-letter":
            wait_until(lambda: depth(agent) == 0, 30, "every event dead-lettered")
            dead = [d.event_id for d in spool.dead_letters()]
            assert dead == ids[len(consumed) :]
            assert spool.dead_letters()[0].reason.startswith(
                f"unroutable: exchange '{exchange}' routing key 'door' (312 NO_ROUTE)"
            )
        else:
            wait_until(lambda: "unroutable" in (spool.stats().sinks[0].last_error or ""), 10)
            assert depth(agent) == len(ids) - len(consumed) and not spool.dead_letters()
        broker.ch.queue_declare(queue, durable=True)  # the operator puts it back
        broker.ch.queue_bind(queue, exchange, "door")
        spool.redeliver()
        wait_until(lambda: depth(agent) == 0 and not spool.dead_letters(), 30, "the rest")
    assert check_delivery(consumed + broker.drain(queue), ids) == 0


# ------------------------------------------------------------------ kill -9


def _start_agent(cfg: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=env
    )


def test_kill_9_between_publish_and_confirm_loses_nothing(
    broker: Broker, write_config: Callable[..., Path], state_dir: Path, relay_env: dict[str, str]
) -> None:
    queue = broker.name()
    cfg = write_config(sink_config(RABBIT, queue=queue))
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["bus"])
        ids = [i for start in range(0, 5000, 1000) for i in put(spool, 1000, start)]
    rng = random.Random()
    for _ in range(5):  # kill -9 at a random moment of the drain, five times
        with _start_agent(cfg, relay_env) as proc:
            read_until(proc, "connected to")
            time.sleep(rng.uniform(0.01, 0.12))
            proc.kill()
            proc.wait()
    assert sink_status(relay_env, cfg)["depth"] > 0  # the kills came mid-drain
    with _start_agent(cfg, relay_env) as proc:
        read_until(proc, "relay started")
        wait_until(lambda: sink_status(relay_env, cfg)["depth"] == 0, 30, "the final drain")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    duplicates = check_delivery(broker.drain(queue), ids)
    print(f"5 kills in 5,000 events: {duplicates} duplicates (same message_id)")


# ------------------------------------------------------------------ the link


@pytest.mark.slow
def test_heartbeats_flow_while_idle(
    broker: Broker, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """With heartbeat_s = 1 RabbitMQ closes a connection silent for ~2 s: an agent idle for
    4 s keeps its connection only if its forwarder services pika while it waits."""
    caplog.set_level(logging.INFO, logger="relay")
    queue = broker.name()
    cfg = write_config(sink_config(RABBIT, queue=queue, heartbeat_s=1))
    with running_agent(cfg) as agent:
        ids = put(spool_of(agent), 1)
        wait_until(lambda: depth(agent) == 0, 10)
        time.sleep(4)
        ids += put(spool_of(agent), 1)
        wait_until(lambda: depth(agent) == 0, 10)
    logs = [r.getMessage() for r in caplog.records if r.name == "relay.sinks.amqp"]
    assert len([m for m in logs if "connected to" in m]) == 1, logs
    assert not [m for m in logs if "lost" in m], logs
    assert check_delivery(broker.drain(queue), ids) == 0


@pytest.mark.slow
def test_dead_link_is_noticed_and_reconnected(
    broker: Broker, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    queue = broker.name()
    with FaultProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        cfg = write_config(sink_config(url, queue=queue, heartbeat_s=1))
        with running_agent(cfg) as agent:
            ids = put(spool_of(agent), 1)
            wait_until(lambda: depth(agent) == 0, 10)
            proxy.set_mode("blackhole")  # the cable is pulled while the agent idles
            cut = time.monotonic()
            lost = lambda: any("lost" in r.getMessage() for r in caplog.records)  # noqa: E731
            wait_until(lost, 20, "the dead link to be noticed")
            noticed = time.monotonic() - cut
            proxy.set_mode("pass")
            ids += put(spool_of(agent), 5)
            wait_until(lambda: depth(agent) == 0, 20, "delivery after reconnecting")
    print(f"dead link noticed after {noticed:.1f}s with heartbeat_s = 1")
    # The sink's heartbeat watch cuts a link silent for a whole heartbeat, checked every
    # third of one: 1 to 1.33 heartbeats (pika's own check alone took 6 to 12 s here).
    assert noticed >= 1 - 0.5
    assert noticed <= 1.5 * 1 + 1
    assert check_delivery(broker.drain(queue), ids) == 0


def test_close_on_a_dead_link_does_not_hang(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp, "_CLOSE_WAIT", 0.5)
    with FaultProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        sink = AmqpSink(AmqpSinkConfig(name="bus", type="amqp", url=url, queue=broker.name()))
        sink.send([Event.new(node="n", source="test", name="x")])
        proxy.set_mode("blackhole")  # the broker will never answer Connection.Close
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 3


def _switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)


@pytest.mark.slow
def test_an_idle_connected_sink_does_not_wake_up(broker: Broker) -> None:
    """P7: waiting with a connection open, without heartbeats, the thread sleeps: pika's
    poller would otherwise wake it every 5 s."""
    cfg = AmqpSinkConfig(name="bus", type="amqp", url=RABBIT, queue=broker.name(), heartbeat_s=0)
    sink = AmqpSink(cfg)
    tids: list[int] = []

    def idle() -> None:
        tids.append(threading.get_native_id())
        sink.wait(None)

    try:
        sink.send([Event.new(node="n", source="test", name="x")])  # connect
        thread = threading.Thread(target=idle)
        thread.start()  # the sink is used by one thread at a time: this one, now
        wait_until(lambda: bool(tids), 5)
        time.sleep(0.5)
        before = _switches(tids[0])
        time.sleep(6)
        woke = _switches(tids[0]) - before
        sink.wake()
        thread.join(5)
    finally:
        sink.close()
    assert woke == 0


# ------------------------------------------------------------------ a private broker


@pytest.mark.slow
def test_broker_restart_mid_stream(
    rabbit: PrivateRabbit, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    queue = f"relay-test-{uuid.uuid4().hex[:10]}"
    cfg = write_config(sink_config(rabbit.url, queue=queue, timeout_s=5))
    ids: list[str] = []
    stop = threading.Event()
    with running_agent(cfg) as agent:
        spool = spool_of(agent)

        def stream() -> None:
            while not stop.is_set():
                ids.extend(put(spool, 20, len(ids)))
                time.sleep(0.01)

        pusher = threading.Thread(target=stream)
        pusher.start()
        try:
            wait_until(lambda: spool.stats().sinks[0].delivered >= 500, 20, "a first delivery")
            rabbit.restart()  # stops gracefully (durable queue, persistent messages kept)
            time.sleep(0.5)  # the stream goes on a little after the broker is back
        finally:
            stop.set()
            pusher.join()
        wait_until(lambda: depth(agent) == 0, 30, "the drain after the restart")
    broker = Broker(rabbit.url)
    broker.names.append(("queue", queue))
    try:
        duplicates = check_delivery(broker.drain(queue), ids)
    finally:
        broker.close()
    logs = [r.getMessage() for r in caplog.records if r.name == "relay.sinks.amqp"]
    assert any("connection to" in m and "lost" in m for m in logs), logs
    assert len([m for m in logs if "connected to" in m]) == 2, logs
    print(f"broker restart: {len(ids)} events, {duplicates} duplicates")


@pytest.mark.slow
def test_blocked_broker_is_a_transient_state_in_status(
    rabbit: PrivateRabbit,
    write_config: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
    relay_env: dict[str, str],
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    broker = Broker(rabbit.url)
    queue = broker.name()
    cfg = write_config(sink_config(rabbit.url, queue=queue))
    try:
        with running_agent(cfg) as agent:
            spool = spool_of(agent)
            ids = put(spool, 10)
            wait_until(lambda: depth(agent) == 0, 10)
            rabbit.ctl("set_vm_memory_high_watermark", "0")  # a memory alarm, at once
            ids += put(spool, 10, 10)
            wait_until(lambda: "blocked" in (spool.stats().sinks[0].last_error or ""), 10)
            time.sleep(2)
            [sink] = spool.stats().sinks
            assert sink.last_error == "broker blocked publishing: low on memory"
            assert sink_status(relay_env, cfg)["last_error"] == sink.last_error  # relay status
            attempts = sink.attempts
            rabbit.ctl("set_vm_memory_high_watermark", "0.4")
            wait_until(lambda: depth(agent) == 0, 20, "delivery once unblocked")
        duplicates = check_delivery(broker.drain(queue), ids)
    finally:
        rabbit.ctl("set_vm_memory_high_watermark", "0.4")
        broker.close()
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    assert len([m for m in logs if "broker blocked publishing" in m]) <= 3, logs  # no storm
    assert any("unblocked" in m for m in logs), logs
    print(f"blocked for ~2s: {attempts} attempts, {duplicates} duplicates")
    assert duplicates == 0  # the window left unconfirmed was awaited, not published again
