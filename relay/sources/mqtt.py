"""The MQTT source: at-least-once from the broker into the spool, on paho-mqtt 2.x.

One paho client per broker connection, owned by its network thread. Each message becomes an
event put in the spool without waiting; the PUBACK is sent from the spool's commit callback,
so the broker forgets a message only once it is on disk (paho's ``manual_ack``). The session
is persistent (stable client id, ``clean_session=False`` / ``clean_start=False``), so what
arrives while relay is away waits at the broker.

paho's own ``loop_forever`` wakes every second and reconnects without jitter; this module
runs the network loop itself: it sleeps until traffic or the next keepalive ping is due, and
reconnects with relay's backoff with full jitter.
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from relay import crashpoints
from relay.backoff import Backoff
from relay.config import MqttConfig, MqttSourceConfig
from relay.errors import DeviceError, DeviceUnavailable, SpoolError
from relay.event import Command, Event, decode_payload
from relay.metrics import NO_METRICS, Metrics
from relay.outage import Outage
from relay.sources.mqtt_memo import SubscriptionMemo
from relay.spool import Chain, Spool

log = logging.getLogger(__name__)

REJECTS = "@ingest"  # where refused messages are dead-lettered (not a valid sink name)
COMMAND_REJECTS = "@commands"  # where malformed commands are
DEFAULT_MAX_PAYLOAD = 256 * 1024
RECONNECT = Backoff(initial=1.0, factor=2.0, cap=60.0)
# After handing messages back (spool full or failing): come back soon, as space frees when
# a sink catches up and nothing tells this thread; each visit costs a handful of messages.
HANDED_BACK = Backoff(initial=0.5, factor=2.0, cap=5.0)


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
        limits = {int(limit) for _, _, limit in self._filters}
        self._one_limit = limits.pop() if len(limits) == 1 else None  # max_payload, if one
        self._listeners: list[tuple[str, Callable[[bytes], None]]] = []  # see listen()
        self._connect_listeners: list[Callable[[], None]] = []
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._stop = threading.Event()
        self._subscribed = False  # this process has subscribed once (session may keep it)
        self._refusing = False  # a put failed: ack nothing more on this connection
        # This connection's puts, stored in order or not at all (see Chain); a new one per
        # connection, so that a commit that ends after a reconnect neither acks on the new
        # connection a packet id that belonged to the old one nor hands the new connection
        # back (a late refusal from the old one did: the new one then acked nothing and
        # never ended, and ingest stalled). _ack_lock makes each callback's check and act
        # one step against _connect starting the next connection.
        self._chain = Chain()
        self._ack_lock = threading.RLock()
        self._refused = Outage()  # puts fail (a full disk): said once, not per flap
        self.connected_once = False  # the current connection got a CONNACK
        self._last_tick = time.monotonic()  # the network loop's last round, for alive()
        self._client_id = cfg.client_id or f"relay-{node}"
        self._memo = SubscriptionMemo(state_dir, self._where, self._client_id)
        self._asked: list[tuple[str, int]] = []  # the subscriptions last sent to the broker
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
            lost_link = self.connected_once and not self._refusing
            failures = 1 if lost_link else failures + 1
            backoff = HANDED_BACK if self._refusing else RECONNECT
            self._pause(self.last_error or "connection lost", failures, backoff)

    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _connect(self) -> None:
        with self._ack_lock:
            self._chain = Chain()
            self._refusing = False
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
            logging.DEBUG if self._refused.reason else logging.INFO,  # handing back: quiet
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
        if not self._stop.is_set() and not self._refusing:  # else last_error says why
            self.last_error = f"disconnected from {self._where}: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # An exception here would end paho's loop (and, before 1.5.1, vanish): never let one out.
        try:
            self._ingest(msg)
        except Exception:
            log.exception("mqtt: could not handle a message on %r", msg._topic)

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
                self._acker(msg).send()  # on the network thread: this connection

        return handle

    # ---------------------------------------------------------------- commands

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._command(msg)
        except Exception:  # as _on_message: nothing may escape into paho's loop
            log.exception("mqtt: could not handle a command on %r", msg._topic)

    def _command(self, msg: mqtt.MQTTMessage) -> None:
        assert self.commands is not None
        ack, recorded = self._acker(msg), self.commands.recorded
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

    # ---------------------------------------------------------------- ingest

    def _ingest(self, msg: mqtt.MQTTMessage) -> None:
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
        where: str = REJECTS,
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

    def _stored(self, error: SpoolError | None, ack: _Ack) -> None:
        """The spool's commit callback (writer thread): ack, or give the message back."""
        with self._ack_lock:
            # Only for the connection the message came on: after a reconnect the broker
            # sends it again, and its packet id may name another message by then.
            if ack.chain is self._chain:
                self._settle(error, ack.send)

    def _settle(self, error: SpoolError | None, ack: Callable[[], None]) -> None:
        if error is None and not self._refusing:
            crashpoints.crash("after_commit_before_ack")
            ack()
            if self._refused.succeeded():
                log.info("mqtt: messages are stored and acknowledged again")
            return
        if error is None:
            return  # stored, but an earlier message was not: let the broker resend both
        if not self._refusing:
            self._refusing = True
            if self._refused.failed(str(error)):  # once per outage, not per reconnect
                log.warning(
                    "mqtt: not acknowledging the broker (%s); it keeps the messages and "
                    "sends them again after we reconnect",
                    error,
                )
            self.last_error = str(error)
            # Disconnecting hands the unacked messages back: MQTT resends them only on a new
            # connection. Non-blocking; the network thread then reconnects after a backoff.
            self._client.disconnect()
