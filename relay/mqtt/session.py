"""What the MQTT connection hands its subscribers: each message, and the session it came on.

A *session* here is one network connection to the broker, from its CONNACK until it ends.
MQTT packet ids name a message only within one connection: after a reconnect the broker
sends an unacknowledged message again, and may give its old packet id to another message.
So an ack goes out only on the session its message came on, and a session that ended, or
was handed back, acks nothing more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.logonce import LogOnce

log = logging.getLogger("relay.mqtt")


class Session:
    """One connection to the broker. Thread-safe: acks come from the spool's writer thread.

    ``resumed``: the broker kept relay's session from an earlier connection (so it may send
    again what relay had not acknowledged).
    """

    def __init__(
        self,
        ack: Callable[[int, int], object],
        disconnect: Callable[[], object],
        *,
        resumed: bool,
        lock: threading.Lock,
        refused: LogOnce,
        on_hand_back: Callable[[str], None],
    ) -> None:
        self.resumed = resumed
        self._ack = ack
        self._disconnect = disconnect
        self._lock = lock  # the connection's: one for all its sessions, as ``refused`` is
        self._refused = refused
        self._on_hand_back = on_hand_back
        self._open = True

    @property
    def open(self) -> bool:
        """Whether messages of this session may still be acknowledged."""
        return self._open

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge message ``mid`` (PUBACK for QoS 1), if this session is still open."""
        with self._lock:
            if not self._open:
                return
            if qos:  # paho's ack() is thread-safe: it queues the PUBACK and wakes the loop
                self._ack(mid, qos)
            if self._refused.reason is not None and self._refused.succeeded():
                log.info("mqtt: messages are stored and acknowledged again")

    def hand_back(self, reason: str) -> None:
        """Give every message not yet acknowledged back to the broker: ack nothing more on
        this session and close it. MQTT sends unacknowledged messages again only on a new
        connection, which the connection makes after a short backoff."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            if self._refused.failed(reason):  # once per refusal, not per reconnect
                log.warning(
                    "mqtt: not acknowledging the broker (%s); it keeps the messages and "
                    "sends them again after we reconnect",
                    reason,
                )
            self._on_hand_back(reason)
            self._disconnect()  # non-blocking; the network thread then reconnects

    def end(self) -> None:
        """The connection is gone: ack nothing more."""
        with self._lock:
            self._open = False


@dataclass(frozen=True, slots=True)
class Message:
    """A PUBLISH from the broker. ``topic`` is raw bytes: it may not be UTF-8."""

    topic: bytes
    payload: bytes
    qos: int
    mid: int  # the packet id, valid within ``session`` only
    dup: bool  # the broker says it may have sent this message before (MQTT DUP flag)
    retain: bool
    session: Session

    def ack(self) -> None:
        """Acknowledge it to the broker, which then forgets it (once it is safe to)."""
        self.session.ack(self.mid, self.qos)


class Subscriber(Protocol):
    """Something that wants messages from the broker: the MQTT source, device commands,
    Home Assistant's birth message. Its methods run on the connection's network thread:
    quick, never blocking on the network, never publishing."""

    # Subscribe again on every connection, even when the broker kept the session: for
    # filters whose retained messages are wanted each time (the broker's $SYS figures).
    resubscribe: bool

    def subscriptions(self) -> Sequence[tuple[str, int]]:
        """The topic filters and the QoS of each, subscribed on every new session."""

    def on_connect(self, session: Session) -> None:
        """A new session started (after CONNACK, before its messages)."""

    def on_message(self, msg: Message) -> None:
        """A message on one of its filters."""

    def settle(self) -> None:
        """Before a clean disconnect: return once what it took is acknowledged or handed
        back, so that the PUBACKs go out before DISCONNECT."""
