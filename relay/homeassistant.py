"""Home Assistant MQTT discovery: relay shows up in Home Assistant as a device whose sensors say,
per sink, how many events wait, how old the oldest is, how many were dead-lettered, when the
last delivery was, and whether the sink is reachable.

What goes on the wire, following Home Assistant's MQTT discovery documentation:

- One retained *device discovery* message (Home Assistant 2024.11 or later) at
  ``<discovery_prefix>/device/relay_<node>/config``: the ``device`` and ``origin`` blocks,
  the availability topic, and under ``components`` five entities per sink. The docs
  recommend one device message over a message per entity when a device has several; and a
  sink no longer configured is then simply left out of the next one.
- Availability is the MQTT connection's own retained ``online`` / ``offline`` status topic
  (``[mqtt] status_topic``, the last will), so the entities turn unavailable when relay stops
  or loses the broker.
- One retained state message per sink, JSON, at ``relay/<node>/sinks/<sink>``; each entity
  picks its value with a ``value_template``.

When: the config on every connection and whenever Home Assistant's birth message (``online``
on ``birth_topic``) says it (re)started, followed by every state. Then a sink's state only
when it changed, and at most once per ``min_interval``. The thread sleeps until the spool
says new work arrived; only while a sink has a backlog (whose state changes as it drains,
without a signal) does it look again every ``min_interval``. An idle relay publishes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from relay import __version__
from relay.config import HomeAssistantConfig
from relay.errors import PublishError
from relay.logonce import LogOnce
from relay.mqtt import Message, Session
from relay.spool import SinkStats, SpoolStats

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0  # seconds for the broker to acknowledge one publish
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # discovery ids allow [a-zA-Z0-9_-] only
# binary_sensor: "ON"/"OFF", and "None" (what the template renders for JSON null) is
# Home Assistant's "unknown".
_CONNECTED = (
    "{% if value_json.connected is none %}None"
    "{% elif value_json.connected %}ON{% else %}OFF{% endif %}"
)
_ATTRIBUTES = (
    "{{ {'last_error': value_json.last_error, 'attempts': value_json.attempts} | tojson }}"
)


class Publisher(Protocol):
    """The MQTT connection, as this module publishes on it (``relay.mqtt``)."""

    status_topic: str

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> None:
        """Raise ``PublishError`` when not connected or not acknowledged within
        ``timeout``."""


class HaWakeups:
    """What the MQTT connection tells Home Assistant discovery (an observer of it): every
    new connection, and Home Assistant's birth message (``online``), make the config due
    again. ``cond`` is the condition the discovery thread sleeps on."""

    resubscribe = False

    def __init__(self, birth_topic: str) -> None:
        self.birth_topic = birth_topic
        self.cond = threading.Condition()
        self.announce = False  # the config is due (a new connection, or HA restarted)
        self.woken = False

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.birth_topic, 0)]  # QoS 0: nothing is queued for us while we are away

    def on_connect(self, session: Session) -> None:
        self.wake(announce=True)

    def on_message(self, msg: Message) -> None:
        if msg.payload.strip() == b"online":  # "offline" is its last will: nothing to do
            self.wake(announce=True)

    def settle(self) -> None:
        pass

    def wake(self, *, announce: bool = False) -> None:
        with self.cond:
            self.announce = self.announce or announce
            self.woken = True
            self.cond.notify()


class SpoolView(Protocol):
    """What this module reads of the spool (``relay.spool.Spool``)."""

    def stats(self) -> SpoolStats: ...

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]: ...


class SinkView(Protocol):
    """What a forwarder knows that the spool does not (``relay.forwarder.Forwarder``)."""

    @property
    def name(self) -> str: ...

    @property
    def connected(self) -> bool | None:
        """None before the first attempt; False after a transient failure until a send
        goes through."""

    @property
    def delivered_at(self) -> float | None:
        """Wall time of the last delivery by this process, if any."""


@dataclass(frozen=True)
class Topics:
    """Where everything is published, derived from the node name only, so that the ids
    Home Assistant keys its entity registry on stay the same across restarts."""

    device_id: str
    config: str
    birth: str

    @classmethod
    def of(cls, cfg: HomeAssistantConfig, node: str) -> Topics:
        device_id = "relay_" + _UNSAFE.sub("_", node)
        return cls(device_id, f"{cfg.discovery_prefix}/device/{device_id}/config", cfg.birth_topic)

    def state(self, node: str, sink: str) -> str:
        return f"relay/{node}/sinks/{sink}"

    def broker(self, node: str) -> str:
        return f"relay/{node}/broker"


def discovery_config(
    topics: Topics,
    node: str,
    sinks: Sequence[str],
    availability_topic: str,
    *,
    broker: bool = False,
) -> dict[str, Any]:
    """The device discovery payload: the device, its origin, availability, and per sink a
    queue-depth, dead-letter, oldest-age, last-delivery and connectivity entity; with
    ``broker``, one for the messages the MQTT broker dropped."""
    components: dict[str, dict[str, Any]] = {}
    if broker:
        unique_id = f"{topics.device_id}_broker_dropped"
        components[unique_id] = {
            "platform": "sensor",
            "name": "broker dropped messages",
            "state_class": "total_increasing",
            "unit_of_measurement": "messages",
            "value_template": "{{ value_json.dropped }}",
            "state_topic": topics.broker(node),
            "entity_category": "diagnostic",
            "unique_id": unique_id,
        }
    for sink in sinks:
        state = topics.state(node, sink)
        prefix = f"{topics.device_id}_{_UNSAFE.sub('_', sink)}"
        common = {"state_topic": state, "entity_category": "diagnostic"}
        for key, entity in _entities(sink).items():
            components[f"{prefix}_{key}"] = {**entity, **common, "unique_id": f"{prefix}_{key}"}
        components[f"{prefix}_connected"]["json_attributes_topic"] = state
    return {
        "device": {
            "identifiers": [topics.device_id],
            "name": f"relay {node}",
            "model": "relay event relay",
            "sw_version": __version__,
        },
        "origin": {"name": "relay", "sw_version": __version__},
        "availability_topic": availability_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "components": components,
    }


def _entities(sink: str) -> dict[str, dict[str, Any]]:
    count = {"platform": "sensor", "state_class": "measurement", "unit_of_measurement": "events"}
    return {
        "depth": {**count, "name": f"{sink} queued", "value_template": "{{ value_json.depth }}"},
        "dead_letters": {
            **count,
            "name": f"{sink} dead letters",
            "value_template": "{{ value_json.dead_letters }}",
        },
        "oldest_age": {
            "platform": "sensor",
            "name": f"{sink} oldest event age",
            "device_class": "duration",
            "state_class": "measurement",
            "unit_of_measurement": "s",
            "value_template": "{{ value_json.oldest_age_s }}",
        },
        "last_delivery": {
            "platform": "sensor",
            "name": f"{sink} last delivery",
            "device_class": "timestamp",
            "value_template": "{{ value_json.last_delivery }}",
        },
        "connected": {
            "platform": "binary_sensor",
            "name": f"{sink} connected",
            "device_class": "connectivity",
            "value_template": _CONNECTED,
            "json_attributes_template": _ATTRIBUTES,
        },
    }


def sink_state(stats: SinkStats, view: SinkView | None, now: float) -> dict[str, Any]:
    """One sink's state message. ``now``: wall time, for the oldest event's age."""
    delivered_at = view.delivered_at if view is not None else None
    return {
        "depth": stats.depth,
        "dead_letters": stats.dead_letters,
        "oldest_age_s": 0 if stats.oldest_at is None else max(round(now - stats.oldest_at), 0),
        "last_delivery": None
        if delivered_at is None
        else datetime.fromtimestamp(delivered_at, UTC).isoformat(timespec="seconds"),
        "connected": view.connected if view is not None else None,
        "last_error": stats.last_error,
        "attempts": stats.attempts,
    }


class HaDiscovery:
    """Announces relay to Home Assistant and keeps its sensors current; see the module."""

    name = "homeassistant"
    is_sink = False

    def __init__(
        self,
        cfg: HomeAssistantConfig,
        *,
        node: str,
        spool: SpoolView,
        sinks: Sequence[SinkView],
        publisher: Publisher,
        wakeups: HaWakeups,
        broker: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.spool = spool
        self.publisher = publisher
        self.wakeups = wakeups
        self.broker = broker  # relay watches its MQTT broker's drops: an entity for them
        self.topics = Topics.of(cfg, node)
        self._failing = LogOnce(settle_s=0)  # publishes fail: one line, and one when over
        self._views = {s.name: s for s in sinks}
        self._interval = cfg.min_interval.total_seconds()
        self._clock = clock
        self._wall = wall
        self._published: dict[str, bytes] = {}  # per sink, the state the broker has
        self._next_at = float("-inf")  # monotonic: no state publish before this
        self._cond = wakeups.cond
        self._changed = True  # states may differ from what was published
        self._stopping = False
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self.run, name="homeassistant", daemon=True)

    # ---------------------------------------------------------------- wake-ups (other threads)

    def _on_change(self) -> None:
        # On every spool commit that adds work: once a change is pending the thread has a
        # timer, so further commits need not wake it (no wake-up per event under load).
        with self._cond:
            if not self._changed:
                self._changed = self.wakeups.woken = True
                self._cond.notify()

    # ---------------------------------------------------------------- one step

    def step(self, now: float) -> float | None:
        """Publish what is due; ``now`` is monotonic seconds. Returns how long until the
        next look is due, or None: nothing until a wake-up."""
        with self._cond:
            announce, self.wakeups.announce = self.wakeups.announce, False
            changed = self._changed
        if announce and self._views:  # no sinks: no entities, and nothing to announce
            if not self._send(self.topics.config, self._config_payload()):
                return None  # not connected: the next connection announces again
            self._published.clear()  # a new connection or a new HA: every state again
            self._next_at = float("-inf")
            changed = True
        if not changed:
            return None
        if now < self._next_at:
            return self._next_at - now
        with self._cond:
            self._changed = False
        busy = self._publish_states()
        self._next_at = now + self._interval
        if not busy:
            return None
        with self._cond:
            self._changed = True  # a backlog drains without a signal: look again
        return self._interval

    def _config_payload(self) -> bytes:
        config = discovery_config(
            self.topics,
            self.node,
            list(self._views),
            self.publisher.status_topic,
            broker=self.broker,
        )
        return json.dumps(config).encode()

    def _publish_states(self) -> bool:
        """Publish each sink's state that changed; True while a sink has a backlog."""
        now, busy = self._wall(), False
        spool = self.spool.stats()
        states = {}
        for stats in spool.sinks:
            busy = busy or stats.depth > 0
            state = sink_state(stats, self._views.get(stats.name), now)
            states[self.topics.state(self.node, stats.name)] = state
        if self.broker and spool.broker is not None:
            drops = {"dropped": spool.broker.dropped, "dropping": spool.broker.dropping}
            states[self.topics.broker(self.node)] = drops
        for topic, state in states.items():
            payload = json.dumps(state).encode()
            if self._published.get(topic) == payload:
                continue
            if not self._send(topic, payload):
                return False  # not connected: the next connection publishes every state
            self._published[topic] = payload
        return busy

    def _send(self, topic: str, payload: bytes) -> bool:
        try:
            self.publisher.publish(topic, payload, qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
        except PublishError as exc:
            if self._failing.failed(str(exc)):
                log.warning("homeassistant: cannot publish to %s: %s", topic, exc)
            return False
        if self._failing.succeeded():
            log.info("homeassistant: publishing again")
        return True

    @property
    def last_error(self) -> str | None:
        return self._failing.reason

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        if not self._views:
            log.warning("homeassistant: discovery is on, but no sinks are configured to show")
        self._unsubscribe = self.spool.on_change(self._on_change)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.ident is not None:  # started
            self._thread.join(2 * PUBLISH_TIMEOUT)
        if self._unsubscribe is not None:
            self._unsubscribe()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self) -> None:
        delay: float | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.wakeups.woken or self._stopping, delay)
                if self._stopping:
                    return
                self.wakeups.woken = False
            try:
                delay = self.step(self._clock())
            except Exception:  # the thread's top: log, and look again a while later
                log.exception("homeassistant: could not publish the state")
                delay = max(self._interval, 1.0)
