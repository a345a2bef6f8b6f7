"""Building the components from the config: the only place that knows the concrete sources,
sinks and devices. Each library is imported here only when the config uses it (pika,
paho and gpiozero cost memory and start-up time on a Pi Zero)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from relay.backoff import Backoff
from relay.commands import CommandExecutor
from relay.config import (
    AmqpSinkConfig,
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
from relay.sinks import Sink
from relay.spool import Spool

if TYPE_CHECKING:
    from relay.sources.mqtt import MqttSource


class Component(Protocol):
    """A long-running part of the agent with its own thread(s)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


def components(settings: Settings, spool: Spool) -> list[Component]:
    """Every component, in start order; the agent stops them in reverse, so inputs stop
    first, then the command executor, then Home Assistant discovery and the MQTT connection,
    then the forwarders. The metrics endpoint, when configured, comes first and stops last;
    it binds its port when built, so a port already taken stops relay before anything runs."""
    metrics, endpoint = _metrics(settings, spool)
    forwarders = [
        Forwarder(build_sink(cfg, metrics), spool, policy(cfg), metrics=metrics)
        for cfg in settings.sinks
    ]
    built: list[Component] = [*endpoint, *forwarders]
    factory = _pin_factory(settings)
    mqtt = _mqtt(settings, spool, metrics)
    devices = {cfg.name: _device(cfg, mqtt, factory) for cfg in settings.devices}
    executor = None
    if devices or settings.commands.mqtt_topic or settings.commands.amqp_queue:
        executor = CommandExecutor(
            spool,
            devices,
            node=settings.node,
            ttl_s=settings.commands.ttl_s,
            timeout_s=settings.commands.timeout_s,
            metrics=metrics,
        )
    if mqtt is not None:
        if executor is not None and settings.commands.mqtt_topic:
            from relay.sources.mqtt_ingest import CommandTopic

            mqtt.commands = CommandTopic(settings.commands.mqtt_topic, executor.received)
        built.append(mqtt)
        if settings.homeassistant.discovery:
            from relay.homeassistant import HaDiscovery

            ha = settings.homeassistant
            built.append(
                HaDiscovery(ha, node=settings.node, spool=spool, sinks=forwarders, broker=mqtt)
            )
    if executor is not None:
        built.append(executor)
    queue_url = settings.command_queue_url()
    if executor is not None and settings.commands.amqp_queue and queue_url:
        from relay.sources.amqp import AmqpCommandSource

        built.append(
            AmqpCommandSource(
                queue_url,
                settings.commands.amqp_queue,
                spool,
                node=settings.node,
                recorded=executor.received,
                on_outcome=executor.on_outcome,
                metrics=metrics,
            )
        )
    gpio = [s for s in settings.sources if isinstance(s, GpioSourceConfig)]
    if gpio:
        from relay.sources.gpio import GpioSource

        built.append(GpioSource(gpio, spool, node=settings.node, pin_factory=factory))
    return built


def policy(cfg: SinkConfig) -> Policy:
    return Policy(
        max_retries=cfg.max_retries,
        max_age=cfg.max_age.total_seconds() if cfg.max_age is not None else None,
        backoff=Backoff(
            cfg.retry_initial.total_seconds(), cfg.retry_factor, cfg.retry_max.total_seconds()
        ),
        batch_max=cfg.batch_max if isinstance(cfg, HttpSinkConfig) else cfg.window,
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
    if isinstance(cfg, RedisSinkConfig):
        from relay.sinks.redis import RedisSink

        return RedisSink(cfg, metrics=metrics)
    raise AssertionError(f"unknown sink type {cfg!r}")


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


def _mqtt(settings: Settings, spool: Spool, metrics: Metrics = NO_METRICS) -> MqttSource | None:
    """The one MQTT connection, when anything needs it."""
    sources = [s for s in settings.sources if isinstance(s, MqttSourceConfig)]
    needs = (
        sources
        or settings.commands.mqtt_topic
        or any(isinstance(d, MqttDeviceConfig) for d in settings.devices)
        or settings.homeassistant.discovery
    )
    if not needs:
        return None
    from relay.sources.mqtt import MqttSource

    return MqttSource(
        settings.mqtt,
        sources,
        spool,
        node=settings.node,
        metrics=metrics,
        state_dir=settings.state_dir,
    )


def _device(cfg: Any, mqtt: MqttSource | None, factory: Any) -> Device:
    if isinstance(cfg, HttpDeviceConfig):
        from relay.devices.http import HttpDevice

        return HttpDevice(cfg)
    if isinstance(cfg, MqttDeviceConfig):
        from relay.devices.mqtt import MqttDevice

        assert mqtt is not None
        return MqttDevice(cfg, mqtt)
    if isinstance(cfg, GpioDeviceConfig):
        from relay.devices.gpio import GpioDevice

        return GpioDevice(cfg, pin_factory=factory)
    raise AssertionError(f"unknown device type {cfg!r}")


def _pin_factory(settings: Settings) -> Any:
    """gpiozero's pin factory named by ``[gpio] pin_factory``, when GPIO is used at all."""
    uses_gpio = any(isinstance(s, GpioSourceConfig) for s in settings.sources) or any(
        isinstance(d, GpioDeviceConfig) for d in settings.devices
    )
    if not uses_gpio:
        return None
    from relay.gpio_factory import pin_factory

    return pin_factory(settings.gpio.pin_factory)
