"""The AMQP sink without a broker: the confirm bookkeeping, error texts, config, and the
forwarder's wait hook (a sink that services its connection while the forwarder idles)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
)

from relay import config
from relay.backoff import Backoff
from relay.config import AmqpSinkConfig
from relay.errors import ConfigError, TransientError
from relay.event import Event
from relay.forwarder import Forwarder, Policy, Step, WaitingSink
from relay.sinks.amqp import AmqpSink
from relay.sinks.amqp_wire import describe
from relay.sinks.confirms import ConfirmWindow, Outcome
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.mocks import MockSink, SinkHandler
from tests.helpers.wait import wait_until

# ------------------------------------------------------------------ ConfirmWindow


def window_of(n: int, *, before: int = 0) -> ConfirmWindow:
    """A window of ``n`` publishes ("e0".."e{n-1}"), after ``before`` unconfirmed ones."""
    w = ConfirmWindow()
    publish(w, [f"old{i}" for i in range(before)])
    publish(w, [f"e{i}" for i in range(n)])
    return w


def publish(w: ConfirmWindow, ids: list[str]) -> list[str]:
    """Begin a window for ``ids``; return those the sink would publish."""
    already = w.begin(ids)
    for message_id in ids[already:]:
        w.published(message_id)
    return ids[already:]


def test_every_ack_one_by_one() -> None:
    w = window_of(3)
    for tag in (1, 2):
        w.confirmed(tag, multiple=False, ok=True)
        assert w.result() is None
    w.confirmed(3, multiple=False, ok=True)
    assert w.result() == (3, None, "")


def test_a_multiple_ack_covers_every_tag_up_to_it() -> None:
    w = window_of(100)
    w.confirmed(60, multiple=True, ok=True)
    assert w.result() is None and w.delivered == 60
    w.confirmed(100, multiple=True, ok=True)
    assert w.result() == (100, None, "")


def test_acks_out_of_order_count_from_the_front() -> None:
    w = window_of(3)
    w.confirmed(3, multiple=False, ok=True)
    w.confirmed(2, multiple=False, ok=True)
    assert w.result() is None and w.delivered == 0
    w.confirmed(1, multiple=False, ok=True)
    assert w.result() == (3, None, "")


def test_a_nack_stops_the_delivered_prefix() -> None:
    w = window_of(5)
    w.confirmed(2, multiple=True, ok=True)
    w.confirmed(3, multiple=False, ok=False)
    w.confirmed(5, multiple=True, ok=True)  # 4 and 5 made it, but come after 3
    assert w.result() == (2, Outcome.NACKED, "")


def test_a_multiple_nack() -> None:
    w = window_of(4)
    w.confirmed(1, multiple=False, ok=True)
    w.confirmed(4, multiple=True, ok=False)
    assert w.result() == (1, Outcome.NACKED, "")


def test_decided_as_soon_as_the_first_failure_is_known() -> None:
    w = window_of(3)
    w.confirmed(1, multiple=False, ok=False)
    assert w.result() == (0, Outcome.NACKED, "")  # no need to wait for 2 and 3


def test_a_return_before_its_ack_makes_it_unroutable() -> None:
    # RabbitMQ: basic.return, then basic.ack of the same message.
    w = window_of(3)
    w.confirmed(1, multiple=False, ok=True)
    w.returned("e1", "unroutable: x")
    assert w.result() == (1, Outcome.RETURNED, "unroutable: x")
    w.confirmed(3, multiple=True, ok=True)  # the acks that follow do not undo the return
    assert w.result() == (1, Outcome.RETURNED, "unroutable: x")


def test_returns_of_unknown_messages_are_ignored() -> None:
    w = window_of(2)
    w.returned("someone-else", "unroutable")
    w.returned(None, "unroutable")
    w.confirmed(2, multiple=True, ok=True)
    assert w.result() == (2, None, "")


def test_answers_about_an_earlier_window_do_not_count() -> None:
    # A failed send left tags 1..3 unconfirmed; the next window is tags 4..5.
    w = window_of(2, before=3)
    w.confirmed(3, multiple=True, ok=True)
    w.confirmed(2, multiple=False, ok=False)
    assert w.result() is None and w.delivered == 0
    w.confirmed(4, multiple=True, ok=True)  # covers the old tags too: only 4 is ours
    assert w.result() is None and w.delivered == 1
    w.confirmed(5, multiple=False, ok=True)
    assert w.result() == (2, None, "")


def test_a_new_channel_numbers_from_one() -> None:
    w = window_of(2, before=7)
    w.new_channel()
    assert publish(w, ["e0"]) == ["e0"]
    w.confirmed(1, multiple=False, ok=True)
    assert w.result() == (1, None, "")


def test_a_window_of_one() -> None:
    w = ConfirmWindow()
    for tag in (1, 2, 3):
        assert publish(w, [f"e{tag}"]) == [f"e{tag}"]
        assert w.result() is None
        w.confirmed(tag, multiple=False, ok=True)
        assert w.result() == (1, None, "")


def test_an_empty_window_is_delivered() -> None:
    w = ConfirmWindow()
    w.begin([])
    assert w.result() == (0, None, "")


def test_an_unanswered_tail_is_awaited_not_published_again() -> None:
    # The send gave up (blocked) with e0 acked and e1, e2 unanswered on an open channel;
    # the forwarder sends again from e1, with one more event.
    w = window_of(3)
    w.confirmed(1, multiple=False, ok=True)
    assert w.result() is None and w.delivered == 1
    assert publish(w, ["e1", "e2", "e3"]) == ["e3"]  # tags 2 and 3 are awaited
    w.confirmed(3, multiple=True, ok=True)
    assert w.result() is None and w.delivered == 2
    w.confirmed(4, multiple=False, ok=True)
    assert w.result() == (3, None, "")


def test_acks_that_came_after_the_send_gave_up_count_in_the_next() -> None:
    w = window_of(3)
    w.confirmed(1, multiple=False, ok=True)  # the failed send reported delivered = 1
    w.confirmed(2, multiple=False, ok=True)  # then e1 was acked, while nobody waited
    assert publish(w, ["e1", "e2"]) == []
    assert w.result() is None and w.delivered == 1
    w.confirmed(3, multiple=False, ok=True)
    assert w.result() == (2, None, "")


def test_a_tail_is_published_again_when_the_batch_differs_or_it_failed() -> None:
    w = window_of(3)
    assert publish(w, ["e0", "e1"]) == ["e0", "e1"]  # shorter: e2 would be left behind
    w = window_of(3)
    w.confirmed(2, multiple=False, ok=False)
    assert publish(w, ["e0", "e1", "e2"]) == ["e0", "e1", "e2"]  # e1 was nacked
    w.confirmed(3, multiple=True, ok=True)  # the old window's late answers do not count
    assert w.result() is None and w.delivered == 0
    w.confirmed(6, multiple=True, ok=True)
    assert w.result() == (3, None, "")


@given(
    st.lists(st.sampled_from(["ack", "nack", "return"]), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_any_order_of_answers_gives_the_acked_prefix(
    answers: list[str], rng: random.Random
) -> None:
    """Whatever the order and grouping of the broker's answers, the result is the run of
    acked events at the front and what happened to the next one."""
    before = rng.randrange(3)
    w = window_of(len(answers), before=before)
    for i in rng.sample(range(len(answers)), len(answers)):
        if answers[i] == "return":
            w.returned(f"e{i}", "unroutable")  # always before that message's ack
        ok = answers[i] != "nack"
        # Sometimes as a multiple answer, where every earlier message gets the same one.
        same = "ack" if ok else "nack"
        multiple = all(a == same for a in answers[:i]) and rng.random() < 0.5
        w.confirmed(before + 1 + i, multiple=multiple, ok=ok)
    prefix = next((i for i, a in enumerate(answers) if a != "ack"), len(answers))
    expected = None if prefix == len(answers) else Outcome(answers[prefix] + "ed")
    result = w.result()
    assert result is not None and result[:2] == (prefix, expected)


# ------------------------------------------------------------------ error texts


def test_describe_digs_out_the_innermost_reason() -> None:
    refused = AMQPConnectorSocketConnectError(ConnectionRefusedError(111, "Connection refused"))
    workflow = AMQPConnectionWorkflowFailed([refused])
    assert describe(pika.exceptions.AMQPConnectionError(workflow)) == "Connection refused"
    closed = pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown")
    assert describe(closed) == "320 CONNECTION_FORCED - shutdown"
    heartbeat = pika.exceptions.AMQPHeartbeatTimeout("No activity in the last 3 seconds")
    assert describe(heartbeat) == "No activity in the last 3 seconds"
    assert describe(None) == "unknown reason"


# ------------------------------------------------------------------ config


def amqp_sink(write_config: Callable[..., Path], url: str, **keys: object) -> str:
    path = write_config(toml.amqp_sink(url, name="bus", queue="q", **keys))
    return str(path)


def test_password_file_replaces_the_password_percent_encoded(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss:w/rd%\n")
    path = amqp_sink(write_config, "amqp://relay:old@broker:5671/%2F", password_file=secret)
    [sink] = config.load(Path(path)).sinks
    assert isinstance(sink, AmqpSinkConfig)
    url = sink.url.get_secret_value()
    assert url == "amqp://relay:p%40ss%3Aw%2Frd%25@broker:5671/%2F"
    assert pika.URLParameters(url).credentials.password == "p@ss:w/rd%"
    assert "p%40ss" not in str(config.dump(config.load(Path(path))))


def test_password_file_needs_a_user(write_config: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret")
    path = amqp_sink(write_config, "amqp://broker/", password_file=f"{tmp_path}/pw")
    with pytest.raises(ConfigError) as info:
        config.load(Path(path))
    [line] = info.value.problems
    assert "password_file needs a user name in url" in line and "secret" not in line


def test_ca_file_needs_amqps(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = amqp_sink(write_config, "amqp://broker/", ca_file=f"{tmp_path}/ca.pem")
    with pytest.raises(ConfigError, match="ca_file is for amqps"):
        config.load(Path(path))


def test_amqps_uses_tls_with_the_ca_file() -> None:
    import ssl

    ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    cfg = AmqpSinkConfig(
        name="bus", type="amqp", url="amqps://u:p@broker.example/%2F", queue="q", ca_file=ca
    )
    sink = AmqpSink(cfg)
    try:
        params = sink._params
        assert params.port == 5671 and params.ssl_options.server_hostname == "broker.example"
        assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    finally:
        sink.close()


# ------------------------------------------------------------------ without a broker


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable_sink() -> Iterator[AmqpSink]:
    cfg = AmqpSinkConfig(
        name="bus", type="amqp", url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/", queue="q"
    )
    sink = AmqpSink(cfg)
    yield sink
    sink.close()


def event(n: int = 0) -> Event:
    return Event.new(node="t", source="test", name="x", payload=n)


def test_connection_refused_is_transient(unreachable_sink: AmqpSink) -> None:
    with pytest.raises(
        TransientError, match=r"cannot connect to 127\.0\.0\.1:\d+: Connection refused"
    ) as info:
        unreachable_sink.send([event()])
    assert info.value.delivered == 0
    assert isinstance(info.value.__cause__, pika.exceptions.AMQPError)


def test_wait_returns_after_its_timeout(unreachable_sink: AmqpSink) -> None:
    started = time.monotonic()
    unreachable_sink.wait(0.2)
    assert 0.2 <= time.monotonic() - started < 1.0


def test_wake_from_another_thread_ends_a_wait(unreachable_sink: AmqpSink) -> None:
    threading.Timer(0.2, unreachable_sink.wake).start()
    started = time.monotonic()
    unreachable_sink.wait(None)
    assert time.monotonic() - started < 2.0


def test_a_wake_before_the_wait_is_not_lost(unreachable_sink: AmqpSink) -> None:
    unreachable_sink.wake()
    started = time.monotonic()
    unreachable_sink.wait(5)
    assert time.monotonic() - started < 1.0
    unreachable_sink.wait(0.1)  # consumed: the next wait waits
    assert isinstance(unreachable_sink, WaitingSink)


# ------------------------------------------------------------------ the forwarder's hook


class WaitingMock(MockSink):
    """A MockSink with the optional wait/wake (``forwarder.WaitingSink``): records the
    timeout of every wait; ``wait`` blocks on a real Event."""

    def __init__(self, handler: SinkHandler | None = None) -> None:
        super().__init__(handler)
        self.waits: list[float | None] = []
        self._woken = threading.Event()

    def wait(self, timeout: float | None) -> None:
        self.waits.append(timeout)
        self._woken.wait(timeout)
        self._woken.clear()

    def wake(self) -> None:
        self._woken.set()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path, durability="memory") as s:
        s.register_sinks(["fake"])
        yield s


def forwarder(spool: Spool, sink: WaitingMock, initial: float = 0.2) -> Forwarder:
    policy = Policy(backoff=Backoff(initial, 1.0, initial), batch_max=10)
    return Forwarder(sink, spool, policy, rng=random.Random(0))


def test_idle_forwarder_waits_in_the_sink_and_a_put_wakes_it(spool: Spool) -> None:
    sink = WaitingMock()
    f = forwarder(spool, sink)
    f.start()
    try:
        wait_until(lambda: sink.waits == [None], 5, "a wait")  # idle: waits without a timeout
        spool.put(event(1))
        wait_until(lambda: sink.batches == [[1]], 5, "the send")
        wait_until(lambda: len(sink.waits) == 2, 5, "the next wait")
    finally:
        f.stop()
    assert not f.alive()
    assert sink.waits == [None, None]  # no timer: woken by the put and by stop only


def test_backoff_waits_in_the_sink_and_puts_do_not_cut_it_short(spool: Spool) -> None:
    sink = WaitingMock(lambda events: TransientError("down"))
    f = forwarder(spool, sink, initial=0.5)
    spool.put(event(1))
    f.start()
    try:
        wait_until(lambda: len(sink.batches) == 1, 5, "the first send")
        started = time.monotonic()
        for i in range(5):  # new work during the backoff: the retry still waits its turn
            spool.put(event(i + 2))
        wait_until(lambda: len(sink.batches) == 2, 5, "the retry")
        assert time.monotonic() - started < 1.5
        assert all(w is not None and w <= 0.5 for w in sink.waits)
    finally:
        f.stop()


def test_stop_wakes_a_waiting_forwarder(spool: Spool) -> None:
    sink = WaitingMock()
    f = forwarder(spool, sink)
    f.start()
    wait_until(lambda: sink.waits == [None], 5, "a wait")
    started = time.monotonic()
    f.stop()
    assert time.monotonic() - started < 1.0


def test_a_put_just_after_the_lease_is_not_missed(spool: Spool) -> None:
    """The lost-wakeup race: the put lands between the lease and the subscription."""
    sink = WaitingMock()
    f = forwarder(spool, sink)
    real_lease = spool.lease
    raced = []

    def lease(*args: object, **kwargs: object) -> object:
        result = real_lease(*args, **kwargs)  # type: ignore[arg-type]
        if not result.records and not raced:
            raced.append(True)
            spool.put(event(7))  # before the forwarder subscribes
        return result

    spool.lease = lease  # type: ignore[method-assign]
    version = spool.version
    assert f.step(0) is Step.IDLE
    f.sleep(version, None, threading.Event())  # must return at once, without waiting
    assert sink.waits == []
    assert f.step(0) is Step.SENT and sink.batches == [[7]]


def test_on_change_calls_back_until_unsubscribed(spool: Spool) -> None:
    calls: list[int] = []
    unsubscribe = spool.on_change(lambda: calls.append(spool.version))
    spool.put(event())
    wait_until(lambda: len(calls) >= 1, 5, "a call back")
    unsubscribe()
    unsubscribe()  # twice is fine
    before = len(calls)
    spool.notify()
    assert len(calls) == before


def test_a_sink_without_wait_keeps_the_old_waits(spool: Spool) -> None:
    f = Forwarder(MockSink(), spool, Policy())
    assert f._waiter is None


def test_what_only_pika_can_check_is_a_config_error(tmp_path: Path) -> None:
    bad_query = AmqpSinkConfig(
        name="bus", type="amqp", url="amqp://u:hunter2@broker/?heartbeat=often", queue="q"
    )
    with pytest.raises(ConfigError, match=r"sinks\.bus\.url: .*heartbeat") as info:
        AmqpSink(bad_query)
    assert "hunter2" not in str(info.value)
    no_ca = AmqpSinkConfig(
        name="bus", type="amqp", url="amqps://broker/", queue="q", ca_file=tmp_path / "none.pem"
    )
    with pytest.raises(ConfigError, match=r"sinks\.bus\.ca_file: No such file"):
        AmqpSink(no_ca)
