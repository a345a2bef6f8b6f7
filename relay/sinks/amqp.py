"""The AMQP sink: publish events to RabbitMQ with publisher confirms, a window at a time.

Each event is one persistent message: the event's JSON as body, ``delivery_mode=2``,
``content_type=application/json``, ``message_id`` = the event id, ``timestamp`` = the event's
time, headers ``node`` and ``source``; published ``mandatory`` on a channel in confirm mode.
``queue``, when set, is declared durable on connecting (and bound to ``exchange`` with the
routing key when both are set; a queue that exists with other arguments, say a quorum queue,
is used as it is).
``send`` publishes the whole batch (up to ``window`` events), then waits for the broker's
confirms of all of it together: that is what keeps throughput without giving up order or
confirms. What the broker says, and what ``send`` does:

- every event acked: it returns, and the forwarder acks them in the spool;
- an event returned as unroutable (basic.return): ``PermanentError``, so that event is
  dead-lettered after ``max_retries``;
- an event nacked, the connection or channel lost, no confirm within ``timeout_s``, or the
  broker blocking publishers (memory or disk alarm): ``TransientError``, retried with backoff.

Both carry ``delivered``: how many events at the front of the batch were acked before the
first one that was not. The forwarder acks those and sends the rest again, in order. If the
channel is still open (blocked, timeout), the next ``send`` awaits the confirms still owed
instead of publishing those events again; what was in flight when a connection was lost (or
the agent killed) may reach the queue twice, with the same ``message_id``.

pika is not thread-safe, so the connection and its IOLoop belong to the forwarder's thread
(``send``, ``wait``; ``close`` once that thread has ended). ``wake`` is the one method other
threads call, and it goes through ``IOLoop.add_callback_threadsafe``, pika's only
thread-safe entry. ``BlockingConnection`` would wait for each confirm before the next publish
(~1,000/s measured here, against ~7,800/s with a window of 100), so this sink drives a
``SelectConnection`` itself (``amqp_loop.PikaLoop``). The forwarder idles in ``wait``, which
runs the same loop, so heartbeats flow and a dead link is noticed while there is nothing to
send: the sink cuts a connection that received nothing for ``heartbeat_s`` (two of the
broker's heartbeats), checked every third of it, so a dead link is noticed within 1.33
``heartbeat_s`` (pika's own check alone takes up to twice ``heartbeat_s + 5``). The next
``send`` after any failure connects again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions

from relay.config import AmqpSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.metrics import NO_METRICS, Metrics
from relay.sinks.amqp_loop import PikaLoop
from relay.sinks.amqp_wire import describe, parameters, properties, reply_code
from relay.sinks.confirms import ConfirmWindow, Outcome

log = logging.getLogger(__name__)

PRECONDITION_FAILED = 406  # AMQP reply code: a declare that does not match what exists
_CLOSE_WAIT = 5.0  # seconds close() waits for the broker's goodbye before cutting the link


class AmqpSink:
    """Publishes events to RabbitMQ with confirms. See the module docstring for the contract."""

    def __init__(self, cfg: AmqpSinkConfig, *, metrics: Metrics = NO_METRICS) -> None:
        self.name = cfg.name
        self._metrics = metrics
        self._params = parameters(cfg)
        self._where = f"{self._params.host}:{self._params.port}"
        self._exchange = cfg.exchange
        self._routing_key = cfg.routing_key or cfg.queue
        self._queue = cfg.queue
        self._declare = bool(cfg.queue)
        self._timeout = cfg.timeout_s
        self._heartbeat = cfg.heartbeat_s
        self._loop = PikaLoop()  # the connection's IOLoop, run by the forwarder's thread
        self._conn: Any = None  # the SelectConnection, open or opening
        self._channel: Any = None  # set once in confirm mode with the queue declared
        self._setup: Any = None  # the channel being set up, until then
        self._up = False  # the connection got as far as a ready channel (for the logs)
        self._failure: BaseException | None = None  # why the connection or channel went
        self._blocked: str | None = None  # connection.blocked's reason, until unblocked
        self._closing: list[Any] = []  # connections given up on, still saying goodbye
        self._window = ConfirmWindow()
        self._closed = False
        _quiet_pika()

    # ---------------------------------------------------------------- the Sink protocol

    def send(self, events: Sequence[Event]) -> None:
        """Publish ``events`` in order; return once the broker has confirmed every one."""
        channel = self._ready()
        if self._blocked is not None:
            raise TransientError(f"broker blocked publishing: {self._blocked}")
        already = self._window.begin([e.id for e in events])
        for event in events[already:]:
            # No I/O happens here: pika buffers until the IOLoop runs, so the channel
            # cannot close under this loop.
            channel.basic_publish(
                self._exchange, self._routing_key, event.to_json(), properties(event), True
            )
            self._window.published(event.id)
        self._loop.run_until(lambda: self._settled(channel), self._timeout)
        self._check(channel)

    def close(self) -> None:
        """Close the connection and the IOLoop. Call once the forwarder's thread has ended.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abandon()
        if not self._loop.run_until(lambda: not self._closing, _CLOSE_WAIT):
            for conn in self._closing:
                # pika has no abortive close: close() waits for the broker's Close-Ok
                # forever. On a dead link, cut the stream as pika's heartbeat checker does.
                conn._terminate_stream(pika.exceptions.StreamLostError("closed by relay"))
            self._loop.run_until(lambda: not self._closing, _CLOSE_WAIT)
        self._loop.close()

    # ---------------------------------------------------------------- the forwarder's wait

    def wait(self, timeout: float | None) -> None:
        """Service the connection (heartbeats, the broker's notices) until ``timeout`` seconds
        pass or :meth:`wake` is called. A wake while nobody waited ends the next wait."""
        self._loop.wait(timeout)

    def wake(self) -> None:
        """End the current or next :meth:`wait`. Any thread; quick; never blocks."""
        self._loop.wake()

    # ---------------------------------------------------------------- sending

    def _settled(self, channel: Any) -> bool:
        return (
            self._window.result() is not None
            or self._channel is not channel
            or self._blocked is not None
        )

    def _check(self, channel: Any) -> None:
        """Raise unless the window just published was confirmed whole."""
        result = self._window.result()
        if result is not None:
            delivered, outcome, reason = result
            if outcome is Outcome.RETURNED:
                raise PermanentError(reason, delivered=delivered, exact=True)
            if outcome is Outcome.NACKED:
                raise TransientError(
                    f"{self._where} did not take an event (basic.nack)", delivered=delivered
                )
            return
        delivered = self._window.delivered
        if self._channel is not channel:
            failure = self._failure
            raise TransientError(
                f"publishing to {self._where} failed: {describe(failure)}", delivered=delivered
            ) from failure
        if self._blocked is not None:
            raise TransientError(f"broker blocked publishing: {self._blocked}", delivered=delivered)
        # The channel is open, so the broker still owes these confirms: the next send awaits
        # them (ConfirmWindow.begin). A dead link is the heartbeat watch's to close.
        raise TransientError(
            f"no confirm from {self._where} within {self._timeout:g}s", delivered=delivered
        )

    # ---------------------------------------------------------------- connecting

    def _ready(self) -> Any:
        """The channel to publish on, connecting first if need be (``TransientError``)."""
        if self._channel is not None:
            return self._channel
        self._failure = None
        if self._conn is None:
            self._conn = pika.SelectConnection(
                self._params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_closed,
                on_close_callback=self._on_closed,
                custom_ioloop=self._loop.ioloop,
            )
        else:  # the connection outlived a channel the broker closed
            self._conn.channel(on_open_callback=self._on_channel_open)
        if not self._loop.run_until(self._ready_or_failed, self._timeout):
            self._abandon()
            raise TransientError(f"no answer from {self._where} within {self._timeout:g}s")
        if self._channel is None:
            why = describe(self._failure)
            raise TransientError(f"cannot connect to {self._where}: {why}") from self._failure
        return self._channel

    def _ready_or_failed(self) -> bool:
        return self._channel is not None or self._failure is not None

    def _abandon(self) -> None:
        """Give up on the connection: it closes in the background, its news no longer count."""
        conn, self._conn, self._channel, self._setup = self._conn, None, None, None
        self._up, self._blocked = False, None
        if conn is not None:
            self._closing.append(conn)
            if not (conn.is_closing or conn.is_closed):
                conn.close()

    def _on_open(self, conn: Any) -> None:
        if conn is not self._conn:
            return
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        conn.channel(on_open_callback=self._on_channel_open)
        if self._heartbeat:
            self._watch(conn, conn.bytes_received, 0)

    def _watch(self, conn: Any, seen: int, quiet: int) -> None:
        """Every third of the heartbeat: cut ``conn`` once it has received nothing for a
        whole heartbeat. RabbitMQ sends one every half heartbeat, so that is two missed, the
        AMQP spec's dead peer. pika's own checker looks only every ``heartbeat + 5`` seconds
        and so takes up to twice that (pika.heartbeat.HeartbeatChecker)."""
        if conn is not self._conn or conn.is_closing or conn.is_closed:
            return
        received = conn.bytes_received
        quiet = 0 if received != seen else quiet + 1
        if quiet >= 3:
            why = f"nothing received for {self._heartbeat}s (heartbeat)"
            # As pika's checker does: no goodbye on a dead link, just cut the stream.
            conn._terminate_stream(pika.exceptions.AMQPHeartbeatTimeout(why))
            return
        self._loop.ioloop.call_later(
            self._heartbeat / 3, functools.partial(self._watch, conn, received, quiet)
        )

    def _on_channel_open(self, channel: Any) -> None:
        if channel.connection is not self._conn:
            return
        self._setup = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        # basic.ack carries no channel: bind it, so that a connection being given up on
        # cannot confirm this one's window.
        channel.confirm_delivery(
            functools.partial(self._on_confirm, channel),
            callback=lambda _: self._declare_queue(channel),
        )

    def _declare_queue(self, channel: Any) -> None:
        if self._declare:
            channel.queue_declare(self._queue, durable=True, callback=lambda _: self._bind(channel))
        else:
            self._bind(channel)

    def _bind(self, channel: Any) -> None:
        if self._queue and self._exchange:
            channel.queue_bind(
                self._queue,
                self._exchange,
                self._routing_key,
                callback=lambda _: self._on_ready(channel),
            )
        else:
            self._on_ready(channel)

    def _on_ready(self, channel: Any) -> None:
        if channel is not self._setup:
            return
        self._window.new_channel()
        self._channel, self._setup = channel, None
        if not self._up:
            log.info("sink %s: connected to %s", self.name, self._where)
            self._metrics.connected(self.name)
            self._up = True
        self._loop.poke()

    # ---------------------------------------------------------------- pika's callbacks

    def _on_closed(self, conn: Any, why: Exception | str) -> None:
        """The connection failed to open, or closed: broker, network, heartbeat, or us."""
        # pika's on_open_error_callback may pass a message rather than an exception
        reason = pika.exceptions.AMQPConnectionError(why) if isinstance(why, str) else why
        if conn in self._closing:
            self._closing.remove(conn)
        elif conn is self._conn:
            if self._up:
                log.warning(
                    "sink %s: connection to %s lost: %s", self.name, self._where, describe(reason)
                )
            self._conn, self._channel, self._setup = None, None, None
            self._up, self._blocked, self._failure = False, None, reason
        self._loop.poke()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        """A channel closed. With its connection: :meth:`_on_closed` tells. By the broker
        (say, 404 no such exchange): the next send opens another."""
        if channel is not self._channel and channel is not self._setup:
            return
        if channel is self._setup and self._declare and reply_code(reason) == PRECONDITION_FAILED:
            self._use_queue_as_is(reason)
            return
        if channel is self._channel and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # Once per channel that worked; a failing setup is the forwarder's to report.
            log.warning("sink %s: the broker closed the channel: %s", self.name, describe(reason))
        self._channel, self._setup, self._failure = None, None, reason
        self._loop.poke()

    def _use_queue_as_is(self, reason: BaseException) -> None:
        # RabbitMQ refuses to declare a queue that exists with other arguments (a quorum
        # queue made by the operator, say) and closes the channel: use it as it is.
        log.warning(
            "sink %s: queue %r exists with other properties (%s); publishing to it as it is",
            self.name,
            self._queue,
            describe(reason),
        )
        self._declare, self._setup = False, None
        self._conn.channel(on_open_callback=self._on_channel_open)

    def _on_confirm(self, channel: Any, frame: Any) -> None:
        if channel is not self._channel:
            return
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self._window.confirmed(method.delivery_tag, multiple=method.multiple, ok=ok)
        self._loop.poke()

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if channel is not self._channel:
            return
        exchange = repr(method.exchange) if method.exchange else "(default)"
        reason = (
            f"unroutable: exchange {exchange} routing key {method.routing_key!r} "
            f"({method.reply_code} {method.reply_text})"
        )
        self._window.returned(properties.message_id, reason)
        self._loop.poke()

    def _on_blocked(self, conn: Any, frame: Any) -> None:
        if conn is self._conn:
            self._blocked = frame.method.reason or "no reason given"
            log.warning("sink %s: broker blocked publishing: %s", self.name, self._blocked)
            self._loop.poke()

    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        if conn is self._conn and self._blocked is not None:
            self._blocked = None
            log.info("sink %s: broker unblocked publishing", self.name)


def _quiet_pika() -> None:
    # pika logs each connection step at INFO and every failure this sink translates (and the
    # forwarder reports once) at WARNING or ERROR: an outage would write several lines per
    # retry. Unless relay itself logs at DEBUG, leave pika's logs out of the journal.
    pika_log = logging.getLogger("pika")
    if pika_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        pika_log.setLevel(logging.CRITICAL)
