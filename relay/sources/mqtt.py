"""MQTT in: events from the source topics, and device commands from the command topic, each
stored in the spool and only then acknowledged to the broker.

Both are subscribers of the agent's one MQTT connection (``relay.mqtt``). Every message
becomes a write to the spool without waiting; its PUBACK goes out from the spool's commit
callback, so the broker forgets a message only once it is on disk. When a write fails (the
spool is full, the disk is), the session is handed back: nothing more is acknowledged on it
and the connection is closed, so the broker keeps the messages and sends them again once
relay reconnects and can store them.

A message relay stored and then died before acknowledging comes again after the restart
(same packet id, DUP set). Each message's key (its packet id and a digest of it) is stored
with it, in the same commit, so such a redelivery is recognised and acknowledged without a
second row: every duplicate a receiver sees carries the id of the first copy.

The network thread (``on_message``) and the spool's writer thread (the commit callbacks) both
work here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from relay import crashpoints
from relay.config import MqttSourceConfig
from relay.errors import SpoolError
from relay.event import Command, Event, decode_payload
from relay.mqtt import Message, Session
from relay.mqtt.routes import matches
from relay.sources import Intake
from relay.spool import COMMAND_REJECTS, INGEST_REJECTS, Chain, SourceKey

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 256 * 1024

Filter = tuple[str, int, int]  # (topic filter, QoS, max_payload)


def key(msg: Message) -> SourceKey:
    """The message's key in the spool: its packet id, and a digest of what the broker
    would send again (topic, payload, QoS, retain), to be sure the id names this message."""
    digest = hashlib.blake2b(msg.topic, digest_size=16)
    digest.update(b"\0%d\0%d\0" % (msg.qos, msg.retain))
    digest.update(msg.payload)
    return SourceKey(msg.mid, digest.digest(), msg.dup)


class _Door:
    """What both MQTT inputs do at the door: ack after the commit, or hand the session back;
    dead-letter what cannot be taken (metadata only, never the payload), then ack it."""

    resubscribe = False

    def __init__(self, spool: Intake, node: str) -> None:
        self.spool = spool
        self.node = node
        self._resent: Session | None = None  # the last session a redelivery was logged for

    def on_connect(self, session: Session) -> None:
        pass

    def settle(self) -> None:
        self.spool.sync()

    def stored(self, error: SpoolError | None, msg: Message) -> None:
        """The spool's commit callback (writer thread): ack, or give the message back."""
        if error is None:
            crashpoints.crash("after_commit_before_ack")
            msg.ack()  # nothing if the session was handed back or has ended
        else:
            msg.session.hand_back(str(error))

    def stored_once(self, new: bool | None, error: SpoolError | None, msg: Message) -> None:
        """As :meth:`stored`, for a keyed write: ``new`` False, it was stored already."""
        if error is None and not new and msg.session is not self._resent:
            self._resent = msg.session  # one line per session, not one per message
            log.info(
                "mqtt: the broker sent again messages relay had stored before it stopped; "
                "acknowledged, not stored twice"
            )
        self.stored(error, msg)

    def reject(self, msg: Message, name: str, reason: str, where: str = INGEST_REJECTS) -> None:
        detail = {
            "rejected": reason,
            "size": len(msg.payload),
            "sha256": hashlib.sha256(msg.payload).hexdigest(),
            "qos": msg.qos,
        }
        event = Event.new(node=self.node, source="mqtt", name=name[:1024], payload=detail)
        log.warning("mqtt: message on %r dead-lettered: %s", name[:200], reason)
        self.spool.reject_async(where, event, reason, lambda error: self.stored(error, msg))


class MqttSource(_Door):
    """Spools every message on the source topics as an event, acked after the commit."""

    def __init__(self, sources: Sequence[MqttSourceConfig], spool: Intake, *, node: str) -> None:
        super().__init__(spool, node)
        self._filters: list[Filter] = [
            (topic, s.qos, int(s.max_payload)) for s in sources for topic in s.topics
        ]
        limits = {limit for _, _, limit in self._filters}
        self._one_limit = limits.pop() if len(limits) == 1 else None  # max_payload, if one
        # This session's puts, stored in order or not at all (see Chain): a new chain per
        # session, so that a refusal on the old one does not stop the new one.
        self._chain = Chain()
        self._session: Session | None = None

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(topic, qos) for topic, qos, _ in self._filters]

    def on_message(self, msg: Message) -> None:
        """An event from a source's topic: into the spool, acked after the commit."""
        if msg.session is not self._session:
            self._session, self._chain = msg.session, Chain()
        try:
            topic = msg.topic.decode("utf-8")
        except UnicodeDecodeError:
            self.reject(msg, msg.topic.hex(), "topic is not UTF-8")
            return
        limit = self._limit(topic)
        if len(msg.payload) > limit:
            reason = f"payload of {len(msg.payload)} bytes over max_payload ({limit})"
            self.reject(msg, topic, reason)
            return
        event = Event.new(
            node=self.node, source="mqtt", name=topic, payload=decode_payload(msg.payload)
        )
        if not msg.qos:  # QoS 0: nothing is sent again, nothing to ack
            self.spool.put_async([event], lambda error: self.stored(error, msg), chain=self._chain)
            return
        self.spool.put_once_async(
            event,
            key(msg),
            lambda new, error: self.stored_once(new, error, msg),
            chain=self._chain,
        )

    def _limit(self, topic: str) -> int:
        if self._one_limit is not None:  # the common case; matching a filter costs 10 us
            return self._one_limit
        for pattern, _, limit in self._filters:
            if matches(pattern, topic):
                return limit
        return max((limit for _, _, limit in self._filters), default=DEFAULT_MAX_PAYLOAD)


class MqttCommandSource(_Door):
    """Device commands on ``topic`` (a filter ending in "/+": the device name), recorded in
    the spool once per id and acked after the commit; ``recorded(id)`` is told of each new
    one."""

    def __init__(
        self, topic: str, spool: Intake, *, node: str, recorded: Callable[[str], None]
    ) -> None:
        super().__init__(spool, node)
        self.topic = topic
        self._recorded = recorded

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topic, 1)]

    def on_message(self, msg: Message) -> None:
        try:
            topic = msg.topic.decode("utf-8")
            cmd = Command.parse(
                msg.payload,
                device=topic.rsplit("/", 1)[-1],
                source="mqtt",
                received_at=time.time(),
            )
        except (ValueError, UnicodeDecodeError) as exc:
            # A command that cannot be understood is never run: kept with the reason.
            name = msg.topic.decode("utf-8", "replace")
            self.reject(msg, name, f"bad command: {exc}", COMMAND_REJECTS)
            return

        def done(new: bool | None, error: SpoolError | None) -> None:
            if error is None and not new:
                log.info("mqtt: command %s was seen before: not run again", cmd.id)
            elif error is None:
                self._recorded(cmd.id)
            self.stored(error, msg)

        self.spool.record_command_async(cmd, done, key=key(msg) if msg.qos else None)
