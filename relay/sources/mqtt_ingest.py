"""What the MQTT source does with each message: spool it and PUBACK it after the commit, or
hand it back to the broker.

Every message becomes a put in the spool without waiting; its PUBACK is sent from the
spool's commit callback (paho's ``manual_ack``), so the broker forgets a message only once
it is on disk. When a put fails (the spool is full, the disk is), nothing more is acked on
that connection and the connection is closed: MQTT resends unacked messages only on a new
connection, so the broker keeps them until relay can store them.

The network thread (``message``, ``command``, ``ack``) and the spool's writer thread (the
commit callbacks) both work here; ``_ack_lock`` makes each callback's check-and-act one step
against ``new_connection``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from relay import crashpoints
from relay.errors import SpoolError
from relay.event import Command, Event, decode_payload
from relay.outage import Outage
from relay.spool import COMMAND_REJECTS, INGEST_REJECTS, Chain, Spool

# The source's logger: one name for everything MQTT ingest says, as before the split
# (journalctl and the fault tests match on it).
log = logging.getLogger("relay.sources.mqtt")

DEFAULT_MAX_PAYLOAD = 256 * 1024

Filter = tuple[str, int, int]  # (topic filter, QoS, max_payload)


@dataclass(frozen=True)
class CommandTopic:
    """Device commands arrive on ``topic`` (a filter ending in "/+": the device name);
    ``recorded(id)`` is told of each command once it is in the spool."""

    topic: str
    recorded: Callable[[str], None]


@dataclass(frozen=True)
class _Ack:
    """Acks one message; ``chain`` is the connection it came on."""

    send: Callable[[], None]
    chain: Chain


class Ingest:
    """Spools the messages of ``client`` (one paho client, reconnected again and again).

    ``on_refused(reason)`` is called (on the writer thread) when a failed put makes it hand
    the connection back; the client is then disconnecting.
    """

    def __init__(
        self,
        client: mqtt.Client,
        spool: Spool,
        *,
        node: str,
        filters: Sequence[Filter],
        on_refused: Callable[[str], None],
    ) -> None:
        self.spool = spool
        self.node = node
        self.refusing = False  # a put failed: ack nothing more on this connection
        self.refused = Outage()  # puts fail (a full disk): said once, not per flap
        self._client = client
        self._filters = filters
        limits = {int(limit) for _, _, limit in filters}
        self._one_limit = limits.pop() if len(limits) == 1 else None  # max_payload, if one
        self._on_refused = on_refused
        # This connection's puts, stored in order or not at all (see Chain); a new one per
        # connection, so that a commit that ends after a reconnect neither acks on the new
        # connection a packet id that belonged to the old one nor hands the new connection
        # back (a late refusal from the old one did: the new one then acked nothing and
        # never ended, and ingest stalled).
        self._chain = Chain()
        self._ack_lock = threading.RLock()

    def new_connection(self) -> None:
        """Before each connect: what comes from here on belongs to the new connection."""
        with self._ack_lock:
            self._chain = Chain()
            self.refusing = False

    # ---------------------------------------------------------------- the network thread

    def message(self, msg: mqtt.MQTTMessage) -> None:
        """An event from a source's topic: into the spool, acked after the commit."""
        ack = self._acker(msg)
        try:
            # paho decodes the topic on access; the raw bytes have no public accessor.
            topic = msg._topic.decode("utf-8")
        except UnicodeDecodeError:
            self._reject(msg, msg._topic.hex(), "topic is not UTF-8", ack)
            return
        limit = self._limit(topic)
        if len(msg.payload) > limit:
            self._reject(
                msg, topic, f"payload of {len(msg.payload)} bytes over max_payload ({limit})", ack
            )
            return
        event = Event.new(
            node=self.node, source="mqtt", name=topic, payload=decode_payload(bytes(msg.payload))
        )
        self.spool.put_async([event], lambda error: self._stored(error, ack), chain=self._chain)

    def command(self, msg: mqtt.MQTTMessage, recorded: Callable[[str], None]) -> None:
        """A device command: recorded in the spool (once per id), acked after the commit;
        ``recorded(id)`` is told of a new one."""
        ack = self._acker(msg)
        try:
            topic = msg._topic.decode("utf-8")
            cmd = Command.parse(
                bytes(msg.payload),
                device=topic.rsplit("/", 1)[-1],
                source="mqtt",
                received_at=time.time(),
            )
        except (ValueError, UnicodeDecodeError) as exc:
            # A command that cannot be understood is never run: kept with the reason.
            self._reject(
                msg,
                msg._topic.decode("utf-8", "replace"),
                f"bad command: {exc}",
                ack,
                COMMAND_REJECTS,
            )
            return

        def done(new: bool | None, error: SpoolError | None) -> None:
            if error is None and not new:
                log.info("mqtt: command %s was seen before: not run again", cmd.id)
            elif error is None:
                recorded(cmd.id)
            self._stored(error, ack)

        self.spool.record_command_async(cmd, done)

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        """Ack a message that is not spooled (one only a listener wanted)."""
        self._acker(msg).send()

    def _limit(self, topic: str) -> int:
        if self._one_limit is not None:  # the common case; topic_matches_sub() costs 10 us
            return self._one_limit
        for pattern, _, limit in self._filters:
            if mqtt.topic_matches_sub(pattern, topic):
                return int(limit)
        return max((int(limit) for _, _, limit in self._filters), default=DEFAULT_MAX_PAYLOAD)

    def _reject(
        self,
        msg: mqtt.MQTTMessage,
        name: str,
        reason: str,
        ack: _Ack,
        where: str = INGEST_REJECTS,
    ) -> None:
        """Dead-letter the message's metadata (never the payload), then ack it."""
        detail = {
            "rejected": reason,
            "size": len(msg.payload),
            "sha256": hashlib.sha256(msg.payload).hexdigest(),
            "qos": msg.qos,
        }
        event = Event.new(node=self.node, source="mqtt", name=name[:1024], payload=detail)
        log.warning("mqtt: message on %r dead-lettered: %s", name[:200], reason)
        self.spool.reject_async(where, event, reason, lambda error: self._stored(error, ack))

    def _acker(self, msg: mqtt.MQTTMessage) -> _Ack:
        client, mid, qos = self._client, msg.mid, msg.qos

        def ack() -> None:
            if qos:  # paho's ack() is thread-safe: it queues the PUBACK and wakes the loop
                client.ack(mid, qos)

        return _Ack(ack, self._chain)

    # ---------------------------------------------------------------- the writer thread

    def _stored(self, error: SpoolError | None, ack: _Ack) -> None:
        """The spool's commit callback: ack, or give the message back."""
        with self._ack_lock:
            # Only for the connection the message came on: after a reconnect the broker
            # sends it again, and its packet id may name another message by then.
            if ack.chain is self._chain:
                self._settle(error, ack.send)

    def _settle(self, error: SpoolError | None, ack: Callable[[], None]) -> None:
        if error is None and not self.refusing:
            crashpoints.crash("after_commit_before_ack")
            ack()
            if self.refused.succeeded():
                log.info("mqtt: messages are stored and acknowledged again")
            return
        if error is None:
            return  # stored, but an earlier message was not: let the broker resend both
        if not self.refusing:
            self.refusing = True
            if self.refused.failed(str(error)):  # once per outage, not per reconnect
                log.warning(
                    "mqtt: not acknowledging the broker (%s); it keeps the messages and "
                    "sends them again after we reconnect",
                    error,
                )
            self._on_refused(str(error))
            # Disconnecting hands the unacked messages back: MQTT resends them only on a new
            # connection. Non-blocking; the network thread then reconnects after a backoff.
            self._client.disconnect()
