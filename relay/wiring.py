"""Building the components from the config: the only place that knows the concrete sources,
sinks and devices. Everything is built in dependency order and handed what it needs when it
is built. Each library is imported here only when the config uses it (pika, paho and
gpiozero cost memory and start-up time on a Pi Zero)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from relay.backoff import Backoff
from relay.commands import Arrivals, CommandExecutor
from relay.config import (
    AmqpSinkConfig,
    DeviceConfig,
    GpioDeviceConfig,
    GpioSourceConfig,
    HttpDeviceConfig,
    HttpSinkConfig,
    MqttDeviceConfig,
    MqttSourceConfig,
    RedisSinkConfig,
    Settings,
    SinkConfig,
)
from relay.devices import Device
from relay.forwarder import Forwarder, Policy
from relay.metrics import COMMAND_QUEUE, NO_METRICS, Metrics
from relay.sinks import Sink, WindowedSink
from relay.spool import Spool
from relay.window import WindowedForwarder

if TYPE_CHECKING:
    from gpiozero.pins import Factory

    from relay.homeassistant import HaWakeups
    from relay.mqtt.connection import MqttConnection


class Component(Protocol):
    """A long-running part of the agent with its own thread(s)."""

    @property
    def name(self) -> str: ...

    @property
    def last_error(self) -> str | None:
        """What is failing now, for systemd's STATUS= (None: nothing)."""

    @property
    def is_sink(self) -> bool:
        """A forwarder: its sink's state is in the spool's statistics already."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


def components(
    settings: Settings, spool: Spool, *, metrics: Metrics | None = None
) -> list[Component]:
    """Every component, in start order; the agent stops them in reverse, so inputs stop
    first, then the command executor, Home Assistant discovery and the forwarders, and the
    MQTT connection last of those. The MQTT connection starts first, so that the broker
    hands over what it queued while relay was away at once, before the forwarders start
    sending. The metrics endpoint, when configured, comes before it and stops last; it binds
    its port when built, so a port already taken stops relay before anything runs.

    ``metrics``: what the components count into, instead of what ``[metrics]`` configures
    (``relay demo`` watches its deliveries through it)."""
    metrics, endpoint = (metrics, []) if metrics is not None else _metrics(settings, spool)
    forwarders = [forwarder(cfg, spool, metrics) for cfg in settings.sinks]
    factory = _pin_factory(settings)
    commands = bool(
        settings.devices or settings.commands.mqtt_topic or settings.commands.amqp_queue
    )
    arrivals = Arrivals() if commands else None
    wakeups = _ha_wakeups(settings)
    mqtt = _mqtt(settings, spool, metrics, arrivals, wakeups)
    devices = {cfg.name: _device(cfg, mqtt, factory) for cfg in settings.devices}
    built: list[Component] = [*endpoint, *([mqtt] if mqtt is not None else []), *forwarders]
    if mqtt is not None and wakeups is not None:
        from relay.homeassistant import HaDiscovery

        built.append(
            HaDiscovery(
                settings.homeassistant,
                node=settings.node,
                spool=spool,
                sinks=forwarders,
                publisher=mqtt,
                wakeups=wakeups,
                broker=True,  # the connection watches the broker's drops (relay.mqtt.drops)
            )
        )
    if arrivals is None:
        return [*built, *_gpio(settings, spool, factory)]
    executor = CommandExecutor(
        spool,
        devices,
        node=settings.node,
        ttl_s=settings.commands.ttl_s,
        timeout_s=settings.commands.timeout_s,
        metrics=metrics,
        arrivals=arrivals,
    )
    built.append(executor)
    queue_url = settings.command_queue_url()
    if settings.commands.amqp_queue and queue_url:
        from relay.sources.amqp import AmqpCommandSource

        built.append(
            AmqpCommandSource(
                queue_url,
                settings.commands.amqp_queue,
                spool,
                node=settings.node,
                recorded=arrivals.mark,
                on_outcome=executor.on_outcome,
                metrics=metrics,
            )
        )
    return [*built, *_gpio(settings, spool, factory)]


def forwarder(cfg: SinkConfig, spool: Spool, metrics: Metrics) -> Forwarder:
    """The sink's forwarder: one send at a time, or a window of them (``max_in_flight``)."""
    sink = build_sink(cfg, metrics)
    if cfg.in_flight == 1:
        return Forwarder(sink, spool, policy(cfg), metrics=metrics)
    if not isinstance(sink, WindowedSink):
        raise TypeError(f"sink {cfg.name} takes one send at a time")
    return WindowedForwarder(sink, spool, policy(cfg), metrics=metrics)


def policy(cfg: SinkConfig) -> Policy:
    return Policy(
        max_retries=cfg.max_retries,
        max_age=cfg.max_age.total_seconds() if cfg.max_age is not None else None,
        # The first retry goes at once: a far end that fails now and then costs a request,
        # not a wait; the backoff starts with the second failure in a row.
        backoff=Backoff(
            cfg.retry_initial.total_seconds(),
            cfg.retry_factor,
            cfg.retry_max.total_seconds(),
            at_once=True,
        ),
        batch_max=cfg.batch,
        max_in_flight=cfg.in_flight,
        # A send is bounded by the sink's timeout; a step far past it is a wedged thread.
        stall_s=2 * cfg.timeout_s + 10,
    )


def build_sink(cfg: SinkConfig, metrics: Metrics = NO_METRICS) -> Sink:
    """The concrete sink for a config section."""
    if isinstance(cfg, HttpSinkConfig):
        from relay.sinks.http import HttpSink

        return HttpSink(cfg)
    if isinstance(cfg, AmqpSinkConfig):
        from relay.sinks.amqp import AmqpSink

        return AmqpSink(cfg, metrics=metrics)
    from relay.sinks.redis import RedisSink

    return RedisSink(cfg, metrics=metrics)


def _metrics(settings: Settings, spool: Spool) -> tuple[Metrics, list[Component]]:
    """What the components count into, and the endpoint serving it (none without
    ``[metrics] listen``: no port, no thread, and prometheus-client is not even imported)."""
    address = settings.metrics.address
    if address is None:
        return NO_METRICS, []
    from relay.metrics.prometheus import PrometheusMetrics
    from relay.metrics.server import MetricsServer

    metrics = PrometheusMetrics(
        spool,
        node=settings.node,
        sinks=[cfg.name for cfg in settings.sinks],
        devices=[cfg.name for cfg in settings.devices],
        connections=_connections(settings),
    )
    return metrics, [MetricsServer(address, metrics.registry)]


def _connections(settings: Settings) -> list[str]:
    """The connections relay_reconnects_total counts besides "mqtt": the AMQP and Redis
    sinks, and the AMQP command queue ("@commands")."""
    names = [
        cfg.name for cfg in settings.sinks if isinstance(cfg, AmqpSinkConfig | RedisSinkConfig)
    ]
    if settings.commands.amqp_queue and settings.command_queue_url():
        names.append(COMMAND_QUEUE)
    return names


def _ha_wakeups(settings: Settings) -> HaWakeups | None:
    if not settings.homeassistant.discovery:
        return None
    from relay.homeassistant import HaWakeups

    return HaWakeups(settings.homeassistant.birth_topic)


def _mqtt(
    settings: Settings,
    spool: Spool,
    metrics: Metrics,
    arrivals: Arrivals | None,
    wakeups: HaWakeups | None,
) -> MqttConnection | None:
    """The one MQTT connection, when anything needs it, with its subscribers."""
    if not settings.uses_mqtt():
        return None
    sources = [s for s in settings.sources if isinstance(s, MqttSourceConfig)]
    from relay.mqtt.connection import MqttConnection
    from relay.mqtt.drops import DropWatch
    from relay.mqtt.session import Subscriber
    from relay.sources.mqtt import MqttCommandSource, MqttSource

    consumers: list[Subscriber] = [MqttSource(sources, spool, node=settings.node)]
    if arrivals is not None and settings.commands.mqtt_topic:
        consumers.append(
            MqttCommandSource(
                settings.commands.mqtt_topic, spool, node=settings.node, recorded=arrivals.mark
            )
        )
    observers: list[Subscriber] = [DropWatch(f"{settings.mqtt.host}:{settings.mqtt.port}", spool)]
    if wakeups is not None:
        observers.append(wakeups)
    return MqttConnection(
        settings.mqtt,
        node=settings.node,
        consumers=consumers,
        observers=observers,
        state_dir=settings.state_dir,
        metrics=metrics,
    )


def _device(cfg: DeviceConfig, mqtt: MqttConnection | None, factory: Factory | None) -> Device:
    if isinstance(cfg, HttpDeviceConfig):
        from relay.devices.http import HttpDevice

        return HttpDevice(cfg)
    if isinstance(cfg, MqttDeviceConfig):
        from relay.devices.mqtt import MqttDevice

        assert mqtt is not None  # an MQTT device makes relay connect (see _mqtt)
        return MqttDevice(cfg, mqtt)
    from relay.devices.gpio import GpioDevice

    assert factory is not None  # a GPIO device makes relay load a pin factory
    return GpioDevice(cfg, pin_factory=factory)


def _gpio(settings: Settings, spool: Spool, factory: Factory | None) -> list[Component]:
    inputs = [s for s in settings.sources if isinstance(s, GpioSourceConfig)]
    if not inputs:
        return []
    from relay.sources.gpio import GpioSource

    assert factory is not None
    return [GpioSource(inputs, spool, node=settings.node, pin_factory=factory)]


def _pin_factory(settings: Settings) -> Factory | None:
    """gpiozero's pin factory named by ``[gpio] pin_factory``, when GPIO is used at all."""
    uses_gpio = any(isinstance(s, GpioSourceConfig) for s in settings.sources) or any(
        isinstance(d, GpioDeviceConfig) for d in settings.devices
    )
    if not uses_gpio:
        return None
    from relay.gpio_factory import pin_factory

    return pin_factory(settings.gpio.pin_factory)
