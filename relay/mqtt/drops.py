"""Watching the broker drop messages: the one loss at relay's border that relay cannot
prevent, and the only component in a position to notice.

A broker keeps a bounded queue per session (Mosquitto: ``max_queued_messages``, 1000 by
default) and drops what comes beyond it, while relay is away and also while it is up but
behind; the publisher got its acknowledgement, and nothing tells the subscriber. What brokers
publish about it, over MQTT:

- Mosquitto: ``$SYS/broker/publish/messages/dropped``, an integer counting every drop since
  the broker started, for all clients (so "messages for relay may be among them", never
  "relay lost N"); published at start, then only when it changes, every ``sys_interval``
  (10 s) at most, retained (before 2.0.16 the retained copy expires 60 s after the last
  change). ``$SYS/broker/version`` (retained, never expiring) shows that ``$SYS`` is
  readable at all.
- EMQX: ``$SYS/brokers/<node>/metrics/delivery/dropped/queue_full``, cumulative, every minute.
- HiveMQ CE and NanoMQ publish nothing about drops over MQTT.

The counter going up is news, said once (a WARNING) with the setting to change, and the end
of it once (no rise for ``STOP_S``; a timer runs only while the broker drops, so an idle
agent gets no message and no wake-up from any of this). The figures go to the spool, so that
``relay status`` (another process) shows them, and a restart compares the counter with the
last one seen: drops while relay was down are news too. When nothing comes from ``$SYS``
within ``QUIET_S`` of subscribing, relay says once that it cannot see the broker's drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from relay.mqtt.routes import matches
from relay.mqtt.session import Message, Session
from relay.spool.model import BrokerDrops

log = logging.getLogger(__name__)

DROPPED = (
    "$SYS/broker/publish/messages/dropped",  # Mosquitto
    "$SYS/brokers/+/metrics/delivery/dropped/queue_full",  # EMQX
)
ALIVE = ("$SYS/broker/version", "$SYS/brokers/+/version")  # retained: sent on subscribing
QUIET_S = 15.0  # a $SYS tree sends its version at once: nothing by then, nothing at all
# No rise for this long and the drops are over: three of Mosquitto's updates (sys_interval
# 10 s, +1) and more than one of EMQX's (a minute).
STOP_S = 90.0
ADVICE = (
    "raise max_queued_messages and max_queued_bytes in the broker's config (README, 'The broker')"
)


class DropStore(Protocol):
    """Where the figures are kept (``relay.spool.Spool``)."""

    def broker_drops(self) -> BrokerDrops | None: ...

    def note_broker_drops(self, drops: BrokerDrops) -> None: ...


class DropWatch:
    """An observer of the MQTT connection; see the module."""

    resubscribe = True  # its retained messages are wanted on every connection

    def __init__(
        self,
        where: str,
        store: DropStore,
        *,
        quiet_s: float = QUIET_S,
        stop_s: float = STOP_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._where = where
        self._store = store
        self._quiet_s = quiet_s
        self._stop_s = stop_s
        self._wall = wall
        self._lock = threading.Lock()  # the network thread and the quiet timer
        self._state = store.broker_drops() or BrokerDrops()
        self._counter: int | None = None  # the broker's counter as seen on this connection
        self._heard = False  # something came from $SYS on this connection
        self._said_blind = False  # "cannot see its drops" is said once per process
        self._timer: threading.Timer | None = None  # the quiet check
        self._over: threading.Timer | None = None  # while dropping: no rise for stop_s
        if self._state.dropping:  # it was when relay stopped: over unless it rises again
            self._schedule_over()

    @property
    def state(self) -> BrokerDrops:
        return self._state

    # ---------------------------------------------------------------- Subscriber

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(topic, 0) for topic in (*DROPPED, *ALIVE)]  # QoS 0: never queued for us

    def on_connect(self, session: Session) -> None:
        with self._lock:
            self._counter, self._heard = None, False
            self._cancel()
            self._timer = threading.Timer(self._quiet_s, self._quiet, args=(session,))
            self._timer.daemon = True
            self._timer.start()

    def on_message(self, msg: Message) -> None:
        topic = msg.topic.decode("utf-8", "replace")
        with self._lock:
            if not self._heard:
                self._heard = True
                self._cancel()
                if not self._state.visible:
                    self._save(replace(self._state, visible=True))
            if _matches_any(topic, DROPPED):
                self._count(msg.payload)

    def settle(self) -> None:
        with self._lock:
            self._cancel()
            if self._over is not None:
                self._over.cancel()

    # ---------------------------------------------------------------- under the lock

    def _count(self, payload: bytes) -> None:
        try:
            value = int(payload.strip())
        except ValueError:
            return
        last = self._counter if self._counter is not None else self._state.counter
        self._counter = value
        if last is None:  # the first figure relay ever sees: where the count starts
            self._save(replace(self._state, counter=value))
            return
        # The counter starts from 0 when the broker restarts: everything it shows is new.
        rise = value - last if value >= last else value
        if rise <= 0:
            return
        self._schedule_over()
        now, old = self._wall(), self._state
        state = replace(
            old,
            counter=value,
            dropped=old.dropped + rise,
            last_drop_at=now,
            dropping=True,
            since=old.since if old.dropping else now,
            dropped_before=old.dropped_before if old.dropping else old.dropped,
        )
        if not old.dropping:
            log.warning(
                "mqtt: the broker at %s dropped %d messages (its $SYS counter went from %d "
                "to %d); messages for relay may be among them: %s",
                self._where,
                rise,
                last if value >= last else 0,
                value,
                ADVICE,
            )
        self._save(state)

    def _schedule_over(self) -> None:
        if self._over is not None:
            self._over.cancel()
        self._over = threading.Timer(self._stop_s, self._overdue)
        self._over.daemon = True
        self._over.start()

    def _overdue(self) -> None:
        """No rise for ``stop_s`` (the timer's thread): the drops are over."""
        with self._lock:
            state = self._state
            if not state.dropping:
                return
            since = state.since or self._wall()
            log.info(
                "mqtt: the broker at %s stopped dropping messages (%d dropped since %s)",
                self._where,
                state.dropped - state.dropped_before,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
            )
            self._save(replace(state, dropping=False))

    def _quiet(self, session: Session) -> None:
        """Nothing from $SYS within ``quiet_s`` of connecting (the timer's thread)."""
        with self._lock:
            if self._heard or not session.open:
                return
            if not self._said_blind:
                self._said_blind = True
                log.warning(
                    "mqtt: the broker at %s publishes no $SYS figures to relay (or none it "
                    "may read): relay cannot see whether the broker drops messages meant for "
                    "it; with Mosquitto, keep sys_interval above 0 and let relay read "
                    "$SYS/broker/# (README, 'The broker')",
                    self._where,
                )
            if self._state.visible is not False:
                self._save(replace(self._state, visible=False))

    def _save(self, state: BrokerDrops) -> None:
        self._state = state
        self._store.note_broker_drops(state)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _matches_any(topic: str, filters: tuple[str, ...]) -> bool:
    return any(matches(f, topic) for f in filters)
