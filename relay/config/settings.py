"""``Settings``: the whole file, its cross-table checks, and where its values come from: the
file, and over it the environment (:func:`environment`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.config.devices import DeviceConfig, MqttDeviceConfig
from relay.config.sections import (
    CommandsConfig,
    GpioConfig,
    HomeAssistantConfig,
    MetricsConfig,
    MqttConfig,
    SpoolConfig,
)
from relay.config.sinks import AmqpSinkConfig, SinkConfig
from relay.config.sources import MqttSourceConfig, SourceConfig

ENV_PREFIX, ENV_NESTING = "RELAY_", "__"


class Settings(BaseModel):
    """The whole file. Components receive their own section, never this object.

    A plain model: ``Settings(...)`` takes only what it is given; ``relay.config.load``
    puts the file and the environment together. (Defaults are validated, as
    pydantic-settings' ``BaseSettings`` did when this was one.)"""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    node: str = Field(default_factory=socket.gethostname, min_length=1)
    state_dir: Path = Path("/var/lib/relay")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    spool: SpoolConfig = SpoolConfig()
    mqtt: MqttConfig = MqttConfig()
    sources: list[SourceConfig] = []
    sinks: list[SinkConfig] = []
    commands: CommandsConfig = CommandsConfig()
    gpio: GpioConfig = GpioConfig()
    devices: list[DeviceConfig] = []
    metrics: MetricsConfig = MetricsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()

    @model_validator(mode="after")
    def _command_queue_url(self) -> Settings:
        if self.commands.amqp_queue and self.command_queue_url() is None:
            raise ValueError("commands.amqp_queue needs commands.amqp_url (or an amqp sink)")
        return self

    def uses_mqtt(self) -> bool:
        """Whether anything needs the [mqtt] broker: an MQTT source, the command topic, an
        MQTT device, or Home Assistant discovery."""
        return (
            any(isinstance(s, MqttSourceConfig) for s in self.sources)
            or bool(self.commands.mqtt_topic)
            or any(isinstance(d, MqttDeviceConfig) for d in self.devices)
            or self.homeassistant.discovery
        )

    def command_queue_url(self) -> str | None:
        """Where ``commands.amqp_queue`` lives: ``commands.amqp_url``, else the first AMQP
        sink's broker."""
        if self.commands.amqp_url is not None:
            return self.commands.amqp_url.get_secret_value()
        sink = next((s for s in self.sinks if isinstance(s, AmqpSinkConfig)), None)
        return sink.url.get_secret_value() if sink else None

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        for kind, items in (("sinks", self.sinks), ("devices", self.devices)):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"{kind}: the name {item.name!r} is used twice")
                seen.add(item.name)
        return self


def environment() -> dict[str, Any]:
    """The values that ``RELAY_*`` environment variables set, as nested data to lay over the
    file's (``RELAY_SPOOL__MAX_SIZE=1GB`` is ``{"spool": {"max_size": "1GB"}}``; a list or a
    table given whole is JSON). ``SettingsError`` for a value that does not decode.

    pydantic-settings does the decoding, as it did when ``Settings`` was its
    ``BaseSettings``. It is imported only when such a variable is set: importing it took a
    quarter of the time of every ``relay push`` (tests/bench/cli_bench.py)."""
    fields = set(Settings.model_fields)
    prefix = ENV_PREFIX.lower()
    if not any(
        name.lower().startswith(prefix)
        and name.lower()[len(prefix) :].split(ENV_NESTING)[0] in fields
        for name in os.environ
    ):
        return {}
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        Settings,  # type: ignore[arg-type]  # it reads only the fields of a plain model
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTING,
        case_sensitive=False,
    )
    return dict(source())


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it: tables merge key by key, anything else (a value, a
    list such as ``sinks``) is replaced whole, as pydantic-settings merges its sources."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        merged[key] = (
            overlay(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return merged
