"""The single tables: ``[spool]``, ``[mqtt]``, ``[commands]`` and ``[gpio]``.

Each configures something several components share (the spool file, the broker connection,
the command queues, the pin library); the ``[[sources]]``, ``[[sinks]]`` and ``[[devices]]``
lists have modules of their own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator

from relay.config.credentials import with_secret
from relay.config.types import Duration, OptionalPath, Section, Size


class SpoolConfig(Section):
    max_size: Size = ByteSize(256_000_000)
    when_full: Literal["reject", "drop_oldest"] = "reject"
    durability: Literal["full", "normal", "memory"] = "full"


class MqttConfig(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: OptionalPath = None
    tls: bool = False
    ca_file: OptionalPath = None
    cert_file: OptionalPath = None
    key_file: OptionalPath = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = Field(30, ge=5, le=3600)
    status_topic: str = ""  # default "relay/<node>/status": retained "online" / "offline"
    session_expiry: Duration = timedelta(days=1)

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        return with_secret(data, "password_file", "password")


class CommandsConfig(Section):
    mqtt_topic: str = ""
    amqp_queue: str = ""
    amqp_url: SecretStr | None = None  # default: the url of the first amqp sink
    ttl_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("mqtt_topic")
    @classmethod
    def _device_level(cls, topic: str) -> str:
        if topic and (not topic.endswith("/+") or "#" in topic or "+" in topic[:-1]):
            raise ValueError('must end with "/+" (the device name) and hold no other wildcard')
        return topic


class GpioConfig(Section):
    # gpiozero's pin factory: "lgpio" on a Pi (Bookworm and later), "mock" for demos/tests.
    pin_factory: Literal["lgpio", "rpigpio", "pigpio", "native", "mock"] = "lgpio"
