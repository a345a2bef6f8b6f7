"""The MQTT source: at-least-once from the broker into the spool, on paho-mqtt 2.x.

One paho client for the broker connection, owned by its network thread; what becomes of each
message (spooled, acked after the commit, or handed back) is ``mqtt_ingest``'s. The session
is persistent (stable client id, ``clean_session=False`` / ``clean_start=False``), so what
arrives while relay is away waits at the broker. The same connection serves the device
commands' topic, listeners (Home Assistant's birth message) and MQTT devices' publishes.

paho's own ``loop_forever`` wakes every second and reconnects without jitter; this module
runs the network loop itself: it sleeps until traffic or the next keepalive ping is due, and
reconnects with relay's backoff with full jitter.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from relay.backoff import Backoff
from relay.config import MqttConfig, MqttSourceConfig
from relay.errors import DeviceError, DeviceUnavailable
from relay.metrics import NO_METRICS, Metrics
from relay.sources.mqtt_ingest import CommandTopic, Ingest
from relay.sources.mqtt_memo import SubscriptionMemo
from relay.spool import Spool

log = logging.getLogger(__name__)

RECONNECT = Backoff(initial=1.0, factor=2.0, cap=60.0)
# After handing messages back (spool full or failing): come back soon, as space frees when
# a sink catches up and nothing tells this thread; each visit costs a handful of messages.
HANDED_BACK = Backoff(initial=0.5, factor=2.0, cap=5.0)


def _write_wanted(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook; the socket pair has already woken the network thread."""


class MqttSource:
    """Subscribes to the configured topic filters and spools every message as an event."""

    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        sources: list[MqttSourceConfig],
        spool: Spool,
        *,
        node: str,
        commands: CommandTopic | None = None,
        rng: random.Random | None = None,
        metrics: Metrics = NO_METRICS,
        state_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.commands = commands
        self.node = node
        self.spool = spool
        self.status_topic = cfg.status_topic or f"relay/{node}/status"
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed our subscriptions once
        self.last_error: str | None = None
        self._filters = [(topic, s.qos, s.max_payload) for s in sources for topic in s.topics]
        self._listeners: list[tuple[str, Callable[[bytes], None]]] = []  # see listen()
        self._connect_listeners: list[Callable[[], None]] = []
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._stop = threading.Event()
        self._subscribed = False  # this process has subscribed once (session may keep it)
        self.connected_once = False  # the current connection got a CONNACK
        self._last_tick = time.monotonic()  # the network loop's last round, for alive()
        self._client_id = cfg.client_id or f"relay-{node}"
        self._memo = SubscriptionMemo(state_dir, self._where, self._client_id)
        self._asked: list[tuple[str, int]] = []  # the subscriptions last sent to the broker
        self._client = self._make_client()
        self._ingest = Ingest(
            self._client,
            spool,
            node=node,
            filters=self._filters,
            on_refused=self._handed_back,
        )
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)

    # ---------------------------------------------------------------- the client

    def _make_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            # MQTT 3.1.1: keep our subscriptions and unacked messages while we are away.
            clean_session=None if v5 else False,
            manual_ack=True,  # PUBACK only after the spool commit
        )
        if self.cfg.username:
            password = self.cfg.password.get_secret_value() if self.cfg.password else None
            client.username_pw_set(self.cfg.username, password)
        if self.cfg.tls:
            client.tls_set_context(self._tls_context())
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        # Without loop_start(), paho writes a queued packet (our PUBACKs, sent from the spool
        # writer's thread) to the socket right there, racing the network thread's own writes
        # and corrupting the stream. With a socket-write callback registered it only queues
        # the packet and wakes our select() through its socket pair, and this thread writes.
        client.on_socket_register_write = _write_wanted
        return client

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self.cfg.ca_file) if self.cfg.ca_file else None
        ctx = ssl.create_default_context(cafile=cafile)
        if self.cfg.cert_file:
            key = str(self.cfg.key_file) if self.cfg.key_file else None
            ctx.load_cert_chain(str(self.cfg.cert_file), key)
        return ctx

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Say "offline", disconnect (the session stays at the broker) and join."""
        # Let the commits in flight finish first, so their PUBACKs go out before DISCONNECT
        # and a clean restart does not receive them again.
        self.spool.sync()
        self._stop.set()
        if self.connected.is_set():
            self._client.publish(self.status_topic, "offline", qos=1, retain=True)
        self._client.disconnect()  # wakes the network loop through paho's socket pair
        self._thread.join()

    def alive(self) -> bool:
        """For the watchdog: the network loop still comes round (at least every keepalive/2,
        or after each reconnect pause)."""
        late = time.monotonic() - self._last_tick > self.cfg.keepalive_s + 30
        return self._thread.is_alive() and not late

    def _run(self) -> None:
        failures = 0  # connections in a row that failed or were handed back
        while not self._stop.is_set():
            try:
                self._connect()
            except (OSError, ssl.SSLError) as exc:
                failures += 1
                self._pause(f"cannot connect to {self._where}: {exc}", failures)
                continue
            self._serve()
            if self._stop.is_set():
                return
            refusing = self._ingest.refusing
            lost_link = self.connected_once and not refusing
            failures = 1 if lost_link else failures + 1
            backoff = HANDED_BACK if refusing else RECONNECT
            self._pause(self.last_error or "connection lost", failures, backoff)

    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _connect(self) -> None:
        self._ingest.new_connection()
        self.connected_once = False
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(self.cfg.session_expiry.total_seconds())
        # clean_start applies to MQTT 5 only; 3.1.1 got clean_session=False in the client.
        self._client.connect(
            self.cfg.host,
            self.cfg.port,
            self.cfg.keepalive_s,
            clean_start=False if props else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )

    def _serve(self) -> None:
        """Run paho's network loop until the connection ends."""
        # Wake for traffic (and acks from other threads, through paho's socket pair), else
        # often enough to ping, and to give up on a ping, in time (see _on_connect); never
        # on a one-second tick.
        tick = self.cfg.keepalive_s / 4
        while not self._stop.is_set():
            self._last_tick = time.monotonic()
            rc = self._client.loop(timeout=tick)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    def _pause(self, error: str, attempt: int, backoff: Backoff = RECONNECT) -> None:
        delay = backoff.delay(attempt, self._rng)
        if error != self.last_error or attempt == 1:
            log.warning("mqtt: %s; reconnecting in %.1fs", error, delay)
        self.last_error = error
        self._last_tick = time.monotonic() + delay  # a pause is not a hang
        self._stop.wait(delay)

    # ---------------------------------------------------------------- callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            return
        self._subscribe(client, session_present=bool(flags.session_present))
        # paho notices a dead link K to 2K after the last byte it got (K: the keepalive it
        # sent, or the broker's): it pings once K has passed in silence, then waits K more
        # for the answer. Checking against K/2 (paho has no public knob) pings twice as
        # often and gives up K/2 after a ping: a dead link is noticed within ~1.25K, before
        # the 1.5K of silence the broker allows us (MQTT 3.1.2.10) runs out.
        client._keepalive = max(client.keepalive // 2, 1)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self.connected.set()
        self.connected_once = True
        self._metrics.connected("mqtt")
        log.log(
            logging.DEBUG if self._ingest.refused.reason else logging.INFO,  # handing back
            "mqtt: connected to %s (session %s)",
            self._where,
            "resumed" if flags.session_present else "new",
        )
        self.last_error = None
        for listener in self._connect_listeners:
            try:
                listener()
            except Exception:  # nothing may escape into paho's loop
                log.exception("mqtt: a connect listener failed")

    def _subscribe(self, client: mqtt.Client, *, session_present: bool) -> None:
        wanted = self._route(client)
        if not wanted:
            return
        # With our session still at the broker, our subscriptions are too, and subscribing
        # again would make it resend every retained message (MQTT 3.1.1, 3.8.4): a retained
        # "door open" would become a new event at each restart. In this process we know what
        # we subscribed; across restarts the memo in state_dir does.
        if session_present and (self._subscribed or self._memo.holds(wanted)):
            if not self._subscribed:  # once per process, as "subscribed to" is
                topics = ", ".join(t for t, _ in wanted)
                log.info("mqtt: subscribed to %s (kept in the broker's session)", topics)
            self._subscribed = True
            self.subscribed.set()
            return
        self._memo.forget()  # until the broker grants these, the memo would say too much
        if self.cfg.protocol == "5":
            # Retain handling 1: retained messages only for a subscription that is new.
            client.subscribe([(t, SubscribeOptions(qos=q, retainHandling=1)) for t, q in wanted])
        else:
            client.subscribe(wanted)
        self._asked = wanted
        self._subscribed = True

    def _route(self, client: mqtt.Client) -> list[tuple[str, int]]:
        """Send commands and listened topics to their callbacks; what to subscribe to."""
        wanted = [(t, int(q)) for t, q, _ in self._filters]
        if self.commands is not None:
            # paho routes a message matching this filter there, and not to on_message.
            client.message_callback_add(self.commands.topic, self._on_command)
            wanted.append((self.commands.topic, 1))
        for topic, callback in self._listeners:
            client.message_callback_add(topic, self._listener(callback))
            # QoS 0: nothing to acknowledge, and nothing queued for us while we are away.
            wanted.append((topic, 0))
        return wanted

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("mqtt: the broker refused a subscription: %s", ", ".join(refused))
        else:
            topics = [t for t, _, _ in self._filters]
            topics += [self.commands.topic] if self.commands else []
            topics += [t for t, _ in self._listeners]
            log.info("mqtt: subscribed to %s", ", ".join(topics))
            self._memo.save(self._asked)
        self.subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set() and not self._ingest.refusing:  # else last_error says why
            self.last_error = f"disconnected from {self._where}: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # An exception here would end paho's loop (and, before 1.5.1, vanish): never let one out.
        try:
            self._ingest.message(msg)
        except Exception:
            log.exception("mqtt: could not handle a message on %r", msg._topic)

    def _handed_back(self, reason: str) -> None:
        """The ingest refused a put and is closing the connection (writer thread)."""
        self.last_error = reason

    # ---------------------------------------------------------------- listeners

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Before :meth:`start`: subscribe to ``topic`` (QoS 0) on every connection and call
        ``callback(payload)`` for its messages, on the network thread: it must be quick and
        must not publish (paho's callbacks hold its lock)."""
        self._listeners.append((topic, callback))

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        """Before :meth:`start`: call ``callback()`` after every connect (once "online" is
        sent), on the network thread; quick and not publishing, as for :meth:`listen`."""
        self._connect_listeners.append(callback)

    def _listener(self, callback: Callable[[bytes], None]) -> Callable[..., None]:
        def handle(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                callback(bytes(msg.payload))
            except Exception:  # as _on_message: nothing may escape into paho's loop
                log.exception("mqtt: could not handle a message on %r", msg._topic)
            # paho hands a message matching a callback's filter to that callback only. One a
            # source wants too (a wide filter) still goes to the spool, which acks it.
            if any(mqtt.topic_matches_sub(t, msg.topic) for t, _, _ in self._filters):
                self._on_message(client, userdata, msg)
            else:
                self._ingest.ack(msg)  # on the network thread: this connection

        return handle

    # ---------------------------------------------------------------- commands

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            assert self.commands is not None  # this callback is added only with commands
            self._ingest.command(msg, self.commands.recorded)
        except Exception:  # as _on_message: nothing may escape into paho's loop
            log.exception("mqtt: could not handle a command on %r", msg._topic)

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> None:
        """Publish for a device command; see ``relay.devices.mqtt.Publisher``."""
        if not self.connected.is_set():
            raise DeviceUnavailable(f"not connected to the MQTT broker {self._where}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DeviceUnavailable(
                f"cannot publish to {self._where}: {mqtt.error_string(info.rc)}"
            )
        if qos == 0:
            return
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise DeviceError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            # paho keeps it and sends it again after a reconnect: it may still arrive.
            raise DeviceError(f"the broker did not acknowledge within {timeout:g}s")
