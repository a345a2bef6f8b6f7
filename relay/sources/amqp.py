"""Device commands from an AMQP queue, on pika's BlockingConnection in its own thread.

RabbitMQ's work-queue pattern: prefetch 1, and a message is acked only after its
command has an outcome, so a command in progress when relay dies is delivered again. The
redelivery is then recognised by its id (the spool recorded it, and the restart marked it
``interrupted``) and acked without running it twice.

A message body is ``{"device": "...", "action": "...", "id": "...", "args": {...}}``; the
device may instead be the routing key's last dot-separated word. pika is not thread-safe:
everything touching the channel runs on this thread; other threads hand work over with
``add_callback_threadsafe``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from relay.backoff import Backoff
from relay.config import mask_url
from relay.errors import SpoolError
from relay.event import Command, Event
from relay.logonce import LogOnce
from relay.metrics import COMMAND_QUEUE, NO_METRICS, Metrics
from relay.sources import Intake
from relay.spool import COMMAND_REJECTS

log = logging.getLogger(__name__)

RECONNECT = Backoff(initial=1.0, factor=2.0, cap=60.0)
# pika's errors for a link that failed or closed: reconnect after a backoff.
_LINK_ERRORS = (pika.exceptions.AMQPError, OSError)

Recorded = Callable[[str], None]
OnOutcome = Callable[[str, Callable[[str, str | None], None]], None]


class AmqpCommandSource:
    name = "amqp-commands"
    is_sink = False

    def __init__(
        self,
        url: str,
        queue: str,
        spool: Intake,
        *,
        node: str,
        recorded: Recorded,
        on_outcome: OnOutcome,
        heartbeat_s: int = 30,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.queue = queue
        self.spool = spool
        self.node = node
        self.connected = threading.Event()
        self._failing = LogOnce(settle_s=0)  # the link fails: one line, not one per retry
        self._url = url
        self._recorded = recorded
        self._on_outcome = on_outcome
        self._heartbeat_s = heartbeat_s
        self._metrics = metrics
        self._rng = random.Random()
        self._stop = threading.Event()
        self._connection: Any = None
        self._channel: Any = None
        self._thread = threading.Thread(target=self._run, name="amqp-commands", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            # The only pika call allowed from another thread; if the connection has closed
            # already, the loop is on its way out anyway.
            with contextlib.suppress(*_LINK_ERRORS):
                connection.add_callback_threadsafe(self._channel.stop_consuming)
        self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def last_error(self) -> str | None:
        return self._failing.reason

    # ---------------------------------------------------------------- this thread

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._consume()
                failures = 0
            except _LINK_ERRORS as exc:
                failures += 1
                delay = RECONNECT.delay(failures, self._rng)
                error = f"command queue {self.queue} on {mask_url(self._url)}: {exc!r}"
                if self._failing.failed(error):
                    log.warning("amqp: %s; reconnecting in %.1fs", error, delay)
                self._stop.wait(delay)
            finally:
                self._close()

    def _consume(self) -> None:
        params = pika.URLParameters(self._url)
        params.heartbeat = self._heartbeat_s
        params.client_properties = {"connection_name": f"relay {self.node} commands"}
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        self._channel.basic_qos(prefetch_count=1)  # one command in hand at a time
        self._channel.queue_declare(self.queue, durable=True)
        self._channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        self.connected.set()
        self._failing.succeeded()
        self._metrics.connected(COMMAND_QUEUE)
        log.info("amqp: consuming commands from %s", self.queue)
        if self._stop.is_set():  # stop() came before there was a connection to wake
            return
        self._channel.start_consuming()  # returns after stop_consuming (from stop())

    def _close(self) -> None:
        self.connected.clear()
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*_LINK_ERRORS):  # a dead link: nothing to close politely
                connection.close()

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        tag = method.delivery_tag
        try:
            cmd = self._parse(body, method.routing_key)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reject(body, f"bad command: {exc}")
            channel.basic_ack(tag)
            return
        try:
            new = self.spool.record_command(cmd)
        except SpoolError as exc:
            # Not recorded: give it back to the queue and let the spool recover meanwhile.
            log.error("amqp: command %s not recorded (%s): returned to the queue", cmd.id, exc)
            channel.basic_nack(tag, requeue=True)
            raise pika.exceptions.AMQPError(str(exc)) from exc
        if new:
            self._recorded(cmd.id)
        else:
            log.info("amqp: command %s was seen before: acked once it has an outcome", cmd.id)
        connection = self._connection
        self._on_outcome(cmd.id, lambda status, error: self._ack_later(connection, channel, tag))

    def _ack_later(self, connection: Any, channel: Any, tag: int) -> None:
        """Called on the executor's thread: hand the ack to the connection's own thread."""

        def ack() -> None:
            # A delivery tag is only valid on its channel; after a reconnect the broker
            # delivers the message again, and the new copy is skipped and acked instead.
            if channel is self._channel and channel.is_open:
                channel.basic_ack(tag)

        with contextlib.suppress(*_LINK_ERRORS):  # that connection is gone: as in ack()
            connection.add_callback_threadsafe(ack)

    def _parse(self, body: bytes, routing_key: str) -> Command:
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError('a command is {"device": ..., "action": ..., "id": ..., "args": ...}')
        device = data.pop("device", None) or routing_key.rsplit(".", 1)[-1]
        return Command.parse(
            json.dumps(data), device=str(device), source="amqp", received_at=time.time()
        )

    def _reject(self, body: bytes, reason: str) -> None:
        event = Event.new(
            node=self.node,
            source="amqp",
            name=f"amqp:{self.queue}",
            payload={"rejected": reason, "size": len(body)},
        )
        log.warning("amqp: a message on %s dead-lettered: %s", self.queue, reason)
        done = threading.Event()
        self.spool.reject_async(COMMAND_REJECTS, event, reason, lambda error: done.set())
        done.wait()
