"""relay's one connection to the MQTT broker, on paho-mqtt 2.x: the client, its network loop,
reconnects, subscriptions, and publishes.

The session is persistent (stable client id, ``clean_session=False`` / ``clean_start=False``),
so what arrives while relay is away waits at the broker. Subscribers are handed in when the
connection is built: *consumers* take the messages of their filters and acknowledge each one
themselves (the MQTT source after the spool's commit, device commands once recorded);
*observers* only look (Home Assistant's birth message), and the connection acknowledges what
no consumer takes. Acknowledgements are manual (paho's ``manual_ack``), and go out only on
the connection a message came on (see ``relay.mqtt.session``).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from relay.backoff import Backoff
from relay.config import MqttConfig
from relay.errors import NotConnected, PublishError, Unconfirmed
from relay.logonce import LogOnce
from relay.metrics import NO_METRICS, Metrics
from relay.mqtt.memo import SubscriptionMemo
from relay.mqtt.routes import Routes
from relay.mqtt.session import Message, Session, Subscriber
from relay.tls import client_context

log = logging.getLogger(__name__)

RECONNECT = Backoff(initial=1.0, factor=2.0, cap=60.0)
# After handing messages back (spool full or failing): come back soon, as space frees when
# a sink catches up and nothing tells this thread; each visit costs a handful of messages.
HANDED_BACK = Backoff(initial=0.5, factor=2.0, cap=5.0)
# How long stop() waits for "offline", the last PUBACKs and DISCONNECT to be written.
LEAVE_S = 5.0


def _write_wanted(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook; the socket pair has already woken the network thread."""


class MqttConnection:
    """The agent's MQTT connection, a component with its own network thread."""

    name = "mqtt"
    is_sink = False

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        node: str,
        consumers: Sequence[Subscriber] = (),
        observers: Sequence[Subscriber] = (),
        state_dir: Path | None = None,
        rng: random.Random | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.cfg = cfg
        self.status_topic = cfg.status_topic or f"relay/{node}/status"
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed our subscriptions once
        self._failing = LogOnce(settle_s=0)  # no connection: one line per reason, until up
        self._subscribers = [*consumers, *observers]
        self._routes = Routes(consumers, observers)
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._stop = threading.Event()
        self._subscribed = False  # this process has subscribed once (session may keep it)
        self._last_tick = time.monotonic()  # the network loop's last round, for alive()
        self._client_id = cfg.client_id or f"relay-{node}"
        self._memo = SubscriptionMemo(state_dir, self._where, self._client_id)
        self._asked: list[tuple[str, int]] = []  # the subscriptions last sent to the broker
        self._asked_mid: int | None = None  # the packet id of that SUBSCRIBE
        self._ack_lock = threading.Lock()  # every session's: check-and-ack against its end
        self._refused = LogOnce()  # a consumer handed messages back (a full disk)
        self._handed_back = False  # the current connection was handed back
        self._why: str | None = None  # why the current connection ended
        self._connected_once = False  # the current connection got a CONNACK
        self._session: Session | None = None
        self._client = self._make_client()
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
            manual_ack=True,  # consumers ack, after the spool commit
        )
        if self.cfg.username:
            password = self.cfg.password.get_secret_value() if self.cfg.password else None
            client.username_pw_set(self.cfg.username, password)
        if self.cfg.tls:
            client.tls_set_context(
                client_context(self.cfg.ca_file, self.cfg.cert_file, self.cfg.key_file)
            )
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

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Say "offline", disconnect (the session stays at the broker) and join."""
        # Let the commits in flight finish first, so their PUBACKs go out before DISCONNECT
        # and a clean restart does not receive them again.
        for subscriber in self._subscribers:
            subscriber.settle()
        self._stop.set()  # no reconnect from here on
        if self.connected.is_set():
            self._client.publish(self.status_topic, "offline", qos=1, retain=True)
        self._client.disconnect()  # queued behind them: _serve writes all three
        self._thread.join()
        # paho closes its sockets only in __del__, which the cyclic GC (our methods are its
        # callbacks) may run after theirs: "unclosed socket". paho has no public close.
        self._client._reset_sockets()

    def alive(self) -> bool:
        """For the watchdog: the network loop still comes round (at least every keepalive/2,
        or after each reconnect pause)."""
        late = time.monotonic() - self._last_tick > self.cfg.keepalive_s + 30
        return self._thread.is_alive() and not late

    def _run(self) -> None:
        failures = 0  # connections in a row that failed or were handed back
        while not self._stop.is_set():
            self._why = None
            try:
                self._connect()
            except (OSError, ssl.SSLError) as exc:
                failures += 1
                self._pause(f"cannot connect to {self._where}: {exc}", failures)
                continue
            self._serve()
            if self._session is not None:
                self._session.end()
            if self._stop.is_set():
                return
            if self._handed_back:  # the session logged it, once per refusal
                failures += 1
                self._wait(HANDED_BACK.delay(failures, self._rng))
                continue
            failures = 1 if self._connected_once else failures + 1
            self._pause(self._why or "connection lost", failures)

    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _connect(self) -> None:
        self._handed_back = self._connected_once = False
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
        leave_by = None
        while True:
            self._last_tick = now = time.monotonic()
            if self._stop.is_set():  # stay until paho has written what stop() queued and
                leave_by = leave_by or now + LEAVE_S  # closed the socket (loop() then fails)
                if now >= leave_by:
                    return
            timeout = tick if leave_by is None else min(tick, leave_by - now)
            if self._client.loop(timeout=timeout) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    @property
    def last_error(self) -> str | None:
        """Why relay is not connected, or is handing messages back; None once it is fine."""
        return self._failing.reason or self._refused.reason

    def _pause(self, error: str, attempt: int) -> None:
        delay = RECONNECT.delay(attempt, self._rng)
        if self._failing.failed(error):
            log.warning("mqtt: %s; reconnecting in %.1fs", error, delay)
        self._wait(delay)

    def _wait(self, delay: float) -> None:
        self._last_tick = time.monotonic() + delay  # a pause is not a hang
        self._stop.wait(delay)

    def _on_hand_back(self, reason: str) -> None:
        """A consumer handed the current connection's messages back (the writer thread)."""
        self._handed_back = True

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
            self._why = f"broker refused the connection: {reason}"
            return
        resumed = bool(flags.session_present)
        # First: what the subscriptions say next (kept in the session, or the session lost)
        # is about this connection.
        log.log(
            logging.DEBUG if self._refused.reason else logging.INFO,  # handing back
            "mqtt: connected to %s (session %s)",
            self._where,
            "resumed" if resumed else "new",
        )
        session = Session(
            client.ack,
            client.disconnect,
            resumed=resumed,
            lock=self._ack_lock,
            refused=self._refused,
            on_hand_back=self._on_hand_back,
        )
        self._session = session
        self._subscribe(client, session_present=resumed)
        # paho notices a dead link K to 2K after the last byte it got (K: the keepalive it
        # sent, or the broker's): it pings once K has passed in silence, then waits K more
        # for the answer. Checking against K/2 (paho has no public knob) pings twice as
        # often and gives up K/2 after a ping: a dead link is noticed within ~1.25K, before
        # the 1.5K of silence the broker allows us (MQTT 3.1.2.10) runs out.
        client._keepalive = max(client.keepalive // 2, 1)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self.connected.set()
        self._connected_once = True
        self._metrics.connected("mqtt")
        self._failing.succeeded()
        for subscriber in self._subscribers:
            try:
                subscriber.on_connect(session)
            except Exception:  # nothing may escape into paho's loop
                log.exception("mqtt: a subscriber failed on connect")

    def _wanted(self, *, again: bool | None = None) -> list[tuple[str, int]]:
        """Every subscriber's filters; with ``again``, only those that do (or do not)
        subscribe again on every connection."""
        wanted: list[tuple[str, int]] = []
        for subscriber in self._subscribers:
            if again is None or subscriber.resubscribe == again:
                wanted += [(t, int(q)) for t, q in subscriber.subscriptions()]
        return list(dict.fromkeys(wanted))

    def _subscribe(self, client: mqtt.Client, *, session_present: bool) -> None:
        wanted, kept_ones = self._wanted(), self._wanted(again=False)
        if not wanted:
            return
        kept = self._subscribed or self._memo.holds(kept_ones)
        if kept and not session_present:
            log.warning(
                "mqtt: the broker at %s did not keep relay's session: what it held for relay "
                "while relay was away is gone (a broker restart without persistence, or a "
                "session older than session_expiry)",
                self._where,
            )
        # With our session still at the broker, our subscriptions are too, and subscribing
        # again would make it resend every retained message (MQTT 3.1.1, 3.8.4): a retained
        # "door open" would become a new event at each restart. In this process we know what
        # we subscribed; across restarts the memo in state_dir does.
        if session_present and kept:
            if not self._subscribed:  # once per process, as "subscribed to" is
                log.info("mqtt: subscribed to %s (kept in the broker's session)", self._topics())
            self._subscribed = True
            self.subscribed.set()
            if again := self._wanted(again=True):  # their retained messages, every time
                client.subscribe(self._options(again, retain_handling=0))
            return
        self._memo.forget()  # until the broker grants these, the memo would say too much
        # Retain handling 1: retained messages only for a subscription that is new.
        _, self._asked_mid = client.subscribe(self._options(wanted, retain_handling=1))
        self._asked = wanted
        self._subscribed = True

    def _topics(self) -> str:
        """What relay subscribes to, for a person: the broker's $SYS figures in a word."""
        topics = [t for t, _ in self._wanted(again=False)]
        if self._wanted(again=True):
            topics.append("the broker's $SYS figures")
        return ", ".join(topics)

    def _options(self, topics: list[tuple[str, int]], *, retain_handling: int) -> list[Any]:
        if self.cfg.protocol != "5":
            return list(topics)
        return [(t, SubscribeOptions(qos=q, retainHandling=retain_handling)) for t, q in topics]

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
        elif mid != self._asked_mid:
            return  # the filters subscribed again on a kept session: nothing new to say
        else:
            log.info("mqtt: subscribed to %s", self._topics())
            self._memo.save(self._wanted(again=False))
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
        self._why = f"disconnected from {self._where}: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # An exception here would end paho's loop (and, before 1.5.1, vanish): never let one out.
        try:
            session = self._session
            assert session is not None  # messages come only after a CONNACK
            # paho decodes the topic on access; the raw bytes have no public accessor.
            message = Message(
                msg._topic, bytes(msg.payload), msg.qos, msg.mid, msg.dup, msg.retain, session
            )
            self._routes.deliver(message)
        except Exception:
            log.exception("mqtt: could not handle a message on %r", msg._topic)

    # ---------------------------------------------------------------- publishing (any thread)

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> None:
        """Publish, and for QoS 1 and 2 wait up to ``timeout`` for the broker's ack.

        Raises ``NotConnected`` when not connected (nothing was sent) and ``Unconfirmed``
        when the broker did not acknowledge in time (paho keeps it and sends it again after
        a reconnect: it may still arrive); ``PublishError`` when paho failed otherwise.
        """
        if not self.connected.is_set():
            raise NotConnected(f"not connected to the MQTT broker {self._where}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"cannot publish to {self._where}: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise PublishError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise Unconfirmed(f"the broker did not acknowledge within {timeout:g}s")
