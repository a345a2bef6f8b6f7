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
threads call, and it goes through ``IOLoop.add_callback_threadsafe``, pika's only thread-safe
entry. ``BlockingConnection`` would wait for each confirm before the next publish (~1,000/s,
PITFALLS.md), so this sink drives a ``SelectConnection`` itself (``_run_until``). The
forwarder idles in ``wait``, which runs the same loop, so heartbeats flow and a dead link is
noticed while there is nothing to send: pika closes a connection that received nothing for
one check interval of ``heartbeat_s + 5`` seconds, i.e. within about two heartbeats. The next
``send`` after any failure connects again.
"""

from __future__ import annotations

import enum
import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from relay.config import AmqpSinkConfig
from relay.errors import ConfigError, PermanentError, TransientError
from relay.event import Event

log = logging.getLogger(__name__)

PRECONDITION_FAILED = 406  # AMQP reply code: a declare that does not match what exists
_CLOSE_WAIT = 5.0  # seconds close() waits for the broker's goodbye before cutting the link


class Outcome(enum.Enum):
    ACKED = "acked"
    NACKED = "nacked"
    RETURNED = "returned"


class ConfirmWindow:
    """Publisher-confirm bookkeeping for one channel. Pure: the sink feeds it what the broker
    says, and asks it which events at the front of the window were taken.

    In confirm mode a channel numbers its publishes 1, 2, 3... (delivery tags); basic.ack and
    basic.nack name one tag, or with ``multiple`` every tag up to it. A window is the run of
    publishes one ``send`` waits for. When a send gave up while its channel stayed open
    (broker blocked, no confirm in time), the next window takes over its unanswered tail if
    the batch starts with exactly those events: they are awaited, not published twice.
    Otherwise answers about earlier publishes arrive late and are ignored.
    """

    def __init__(self) -> None:
        self._next_tag = 1  # the tag the channel gives its next publish
        self._first = 1  # the tag of the window's first publish
        self._ids: list[str] = []  # the window's events, in publish order
        self._outcomes: list[Outcome | None] = []
        self._index: dict[str, int] = {}  # message id -> position in the window
        self._reasons: dict[int, str] = {}  # position -> why it was returned
        self._acked = 0  # length of the run of acked events at the front

    def new_channel(self) -> None:
        """A new channel numbers its publishes from 1 again; nothing carries over."""
        self._next_tag = self._first = 1
        self._ids, self._outcomes, self._index, self._reasons, self._acked = [], [], {}, {}, 0

    def begin(self, ids: Sequence[str]) -> int:
        """Start a window for the events ``ids``; return how many at its front are already
        published (the caller publishes the rest, recording each with :meth:`published`)."""
        # Where the batch starts in the last window: past what that send reported delivered,
        # and maybe past more (acked since), but every later publish must be in the batch.
        start = self._index.get(ids[0], len(self._ids)) if ids else len(self._ids)
        tail, outcomes = self._ids[start:], self._outcomes[start:]
        if tail and list(ids[: len(tail)]) == tail and set(outcomes) <= {None, Outcome.ACKED}:
            self._first += start
        else:
            self._first, tail, outcomes = self._next_tag, [], []
        self._ids, self._outcomes, self._reasons = tail, outcomes, {}
        self._index = {message_id: i for i, message_id in enumerate(tail)}
        self._acked = 0
        self._advance()
        return len(tail)

    def published(self, message_id: str) -> None:
        """Record the channel's next publish (call in publish order)."""
        self._index[message_id] = len(self._outcomes)
        self._ids.append(message_id)
        self._outcomes.append(None)
        self._next_tag += 1

    def confirmed(self, tag: int, *, multiple: bool, ok: bool) -> None:
        """basic.ack (``ok``) or basic.nack of ``tag``, or of every tag up to it."""
        end = tag - self._first  # the position of ``tag``; negative: an earlier window's
        start = 0 if multiple else end
        for i in range(max(start, 0), min(end, len(self._outcomes) - 1) + 1):
            if self._outcomes[i] is None:  # a return came first: it stands (see returned)
                self._outcomes[i] = Outcome.ACKED if ok else Outcome.NACKED
        self._advance()

    def _advance(self) -> None:
        while self._acked < len(self._outcomes) and self._outcomes[self._acked] is Outcome.ACKED:
            self._acked += 1

    def returned(self, message_id: str | None, reason: str) -> None:
        """basic.return of the message ``message_id``: routed to no queue.

        RabbitMQ sends basic.return *before* basic.ack for a mandatory message it could not
        route, and then acks it all the same: the return is what counts.
        """
        i = self._index.get(message_id or "")
        if i is not None and self._outcomes[i] is None:
            self._outcomes[i] = Outcome.RETURNED
            self._reasons[i] = reason

    @property
    def delivered(self) -> int:
        """How many events at the front of the window are acked so far."""
        return self._acked

    def result(self) -> tuple[int, Outcome | None, str] | None:
        """None while undecided; else ``(delivered, outcome, reason)``: ``delivered`` events
        at the front were acked, and ``outcome`` is what happened to the next one (None: the
        whole window was acked). Decided as soon as that next event has its answer: the ones
        after it are sent again anyway, to keep the order."""
        if self._acked == len(self._outcomes):
            return self._acked, None, ""
        outcome = self._outcomes[self._acked]
        if outcome is None:
            return None
        return self._acked, outcome, self._reasons.get(self._acked, "")


class AmqpSink:
    """Publishes events to RabbitMQ with confirms. See the module docstring for the contract."""

    def __init__(self, cfg: AmqpSinkConfig) -> None:
        self.name = cfg.name
        self._params = _parameters(cfg)
        self._where = f"{self._params.host}:{self._params.port}"
        self._exchange = cfg.exchange
        self._routing_key = cfg.routing_key or cfg.queue
        self._queue = cfg.queue
        self._declare = bool(cfg.queue)
        self._timeout = cfg.timeout_s
        self._ioloop = IOLoop()
        # pika's poller wakes every 5 s even with nothing due (_PollerBase._MAX_POLL_TIMEOUT,
        # "a backstop"). Every timer here is on this loop and wake() interrupts its poll, so
        # the backstop only costs an idle agent 12 wake-ups a minute (P7).
        self._ioloop._poller._MAX_POLL_TIMEOUT = 3600  # type: ignore[attr-defined]
        self._conn: Any = None  # the SelectConnection, open or opening
        self._channel: Any = None  # set once in confirm mode with the queue declared
        self._setup: Any = None  # the channel being set up, until then
        self._up = False  # the connection got as far as a ready channel (for the logs)
        self._failure: BaseException | None = None  # why the connection or channel went
        self._blocked: str | None = None  # connection.blocked's reason, until unblocked
        self._closing: list[Any] = []  # connections given up on, still saying goodbye
        self._window = ConfirmWindow()
        self._until: Callable[[], bool] | None = None  # what _run_until waits for
        self._woken = threading.Event()
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
        self._run_until(lambda: self._settled(channel), self._timeout)
        self._check(channel)

    def close(self) -> None:
        """Close the connection and the IOLoop. Call once the forwarder's thread has ended.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abandon()
        if not self._run_until(lambda: not self._closing, _CLOSE_WAIT):
            for conn in self._closing:
                # pika has no abortive close: close() waits for the broker's Close-Ok
                # forever. On a dead link, cut the stream as pika's heartbeat checker does.
                conn._terminate_stream(pika.exceptions.StreamLostError("closed by relay"))
            self._run_until(lambda: not self._closing, _CLOSE_WAIT)
        self._ioloop.close()

    # ---------------------------------------------------------------- the forwarder's wait

    def wait(self, timeout: float | None) -> None:
        """Service the connection (heartbeats, the broker's notices) until ``timeout`` seconds
        pass or :meth:`wake` is called. A wake while nobody waited ends the next wait."""
        self._run_until(self._woken.is_set, timeout)
        self._woken.clear()

    def wake(self) -> None:
        """End the current or next :meth:`wait`. Any thread; quick; never blocks."""
        if not self._woken.is_set():
            self._woken.set()
            self._ioloop.add_callback_threadsafe(self._ioloop.stop)

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
                raise PermanentError(reason, delivered=delivered)
            if outcome is Outcome.NACKED:
                raise TransientError(
                    f"{self._where} did not take an event (basic.nack)", delivered=delivered
                )
            return
        delivered = self._window.delivered
        if self._channel is not channel:
            failure = self._failure
            raise TransientError(
                f"publishing to {self._where} failed: {_describe(failure)}", delivered=delivered
            ) from failure
        if self._blocked is not None:
            raise TransientError(f"broker blocked publishing: {self._blocked}", delivered=delivered)
        # The channel is open, so the broker still owes these confirms: the next send awaits
        # them (ConfirmWindow.begin). A dead link is pika's heartbeat checker's to close.
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
                custom_ioloop=self._ioloop,
            )
        else:  # the connection outlived a channel the broker closed
            self._conn.channel(on_open_callback=self._on_channel_open)
        if not self._run_until(self._ready_or_failed, self._timeout):
            self._abandon()
            raise TransientError(f"no answer from {self._where} within {self._timeout:g}s")
        if self._channel is None:
            why = _describe(self._failure)
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
            self._up = True
        self._poke()

    # ---------------------------------------------------------------- pika's callbacks

    def _on_closed(self, conn: Any, reason: Exception | str) -> None:
        """The connection failed to open, or closed: broker, network, heartbeat, or us."""
        if isinstance(reason, str):  # pika's on_open_error_callback may pass a message
            reason = pika.exceptions.AMQPConnectionError(reason)
        if conn in self._closing:
            self._closing.remove(conn)
        elif conn is self._conn:
            if self._up:
                log.warning(
                    "sink %s: connection to %s lost: %s", self.name, self._where, _describe(reason)
                )
            self._conn, self._channel, self._setup = None, None, None
            self._up, self._blocked, self._failure = False, None, reason
        self._poke()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        """A channel closed. With its connection: :meth:`_on_closed` tells. By the broker
        (say, 404 no such exchange): the next send opens another."""
        if channel is not self._channel and channel is not self._setup:
            return
        if channel is self._setup and self._declare and _code(reason) == PRECONDITION_FAILED:
            self._use_queue_as_is(reason)
            return
        if channel is self._channel and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # Once per channel that worked; a failing setup is the forwarder's to report.
            log.warning("sink %s: the broker closed the channel: %s", self.name, _describe(reason))
        self._channel, self._setup, self._failure = None, None, reason
        self._poke()

    def _use_queue_as_is(self, reason: BaseException) -> None:
        # RabbitMQ refuses to declare a queue that exists with other arguments (a quorum
        # queue made by the operator, say) and closes the channel: use it as it is.
        log.warning(
            "sink %s: queue %r exists with other properties (%s); publishing to it as it is",
            self.name,
            self._queue,
            _describe(reason),
        )
        self._declare, self._setup = False, None
        self._conn.channel(on_open_callback=self._on_channel_open)

    def _on_confirm(self, channel: Any, frame: Any) -> None:
        if channel is not self._channel:
            return
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self._window.confirmed(method.delivery_tag, multiple=method.multiple, ok=ok)
        self._poke()

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if channel is not self._channel:
            return
        exchange = repr(method.exchange) if method.exchange else "(default)"
        reason = (
            f"unroutable: exchange {exchange} routing key {method.routing_key!r} "
            f"({method.reply_code} {method.reply_text})"
        )
        self._window.returned(properties.message_id, reason)
        self._poke()

    def _on_blocked(self, conn: Any, frame: Any) -> None:
        if conn is self._conn:
            self._blocked = frame.method.reason or "no reason given"
            log.warning("sink %s: broker blocked publishing: %s", self.name, self._blocked)
            self._poke()

    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        if conn is self._conn and self._blocked is not None:
            self._blocked = None
            log.info("sink %s: broker unblocked publishing", self.name)

    # ---------------------------------------------------------------- the IOLoop

    def _run_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Run the IOLoop until ``done()`` or ``timeout`` seconds (None: no limit); return
        ``done()``. Callbacks call :meth:`_poke`, which stops the loop once ``done()`` holds;
        a stop for another reason (a stale wake, the timer) just goes round again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._until = done
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                timer = None if left is None else self._ioloop.call_later(left, self._ioloop.stop)
                self._ioloop.start()
                if timer is not None:
                    self._ioloop.remove_timeout(timer)
            return True
        finally:
            self._until = None

    def _poke(self) -> None:
        if self._until is not None and self._until():
            self._ioloop.stop()


def _parameters(cfg: AmqpSinkConfig) -> Any:
    """pika's connection parameters; ``ConfigError`` for what only pika can check."""
    try:
        params = pika.URLParameters(cfg.url.get_secret_value())
    except ValueError as exc:  # say, ?heartbeat=abc (pika names the value, never the URL)
        raise ConfigError([f"sinks.{cfg.name}.url: {exc}"]) from None
    params.heartbeat = cfg.heartbeat_s  # pika 1.x: the client's value wins over the broker's
    params.connection_attempts = 1  # the forwarder retries, with backoff
    params.socket_timeout = cfg.timeout_s
    params.stack_timeout = cfg.timeout_s
    params.client_properties = {"connection_name": f"relay sink {cfg.name}"}
    if params.ssl_options is not None:  # amqps://
        try:
            context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        except OSError as exc:  # ssl.SSLError is one too
            raise ConfigError([f"sinks.{cfg.name}.ca_file: {exc.strerror or exc}"]) from None
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params


def properties(event: Event) -> Any:
    """The AMQP properties relay publishes ``event`` with (DESIGN.md)."""
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=event.id,
        timestamp=_timestamp(event),
        headers={"node": event.node, "source": event.source},
    )


def _timestamp(event: Event) -> int:
    """The event's time as AMQP has it: whole seconds since the epoch."""
    try:
        return int(datetime.fromisoformat(event.time).timestamp())
    except ValueError:
        return int(time.time())


def _code(reason: BaseException) -> int | None:
    code = getattr(reason, "reply_code", None)
    return code if isinstance(code, int) else None


def _describe(exc: BaseException | None) -> str:
    """The innermost reason in pika's wrappers: "Connection refused", "320 CONNECTION_FORCED
    - broker forced connection closure with reason 'shutdown'", ..."""
    for _ in range(10):
        nested = getattr(exc, "exceptions", None)  # AMQPConnectionWorkflowFailed: attempts
        inner = getattr(exc, "exception", None)  # AMQPConnectorPhaseErrorBase: one phase's
        if nested:
            exc = nested[-1]
        elif isinstance(inner, BaseException):
            exc = inner
        elif exc is not None and exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    if exc is None:
        return "unknown reason"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if _code(exc) is not None:
        return f"{_code(exc)} {getattr(exc, 'reply_text', '')}".strip()
    return str(exc) or type(exc).__name__


def _quiet_pika() -> None:
    # pika logs each connection step at INFO and every failure this sink translates (and the
    # forwarder reports once) at WARNING or ERROR: an outage would write several lines per
    # retry. Unless relay itself logs at DEBUG, leave pika's logs out of the journal.
    pika_log = logging.getLogger("pika")
    if pika_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        pika_log.setLevel(logging.CRITICAL)
