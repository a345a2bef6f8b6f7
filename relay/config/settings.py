"""``Settings``: the whole file, its cross-table checks, and where its values come from."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

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


class Settings(BaseSettings):
    """The whole file. Components receive their own section, never this object."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment over file; no .env files and no secrets dir: a daemon's config should
        # come from one place a person can find.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))
