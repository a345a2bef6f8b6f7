"""The single tables: ``[spool]``, ``[mqtt]``, ``[commands]``, ``[gpio]``, ``[metrics]`` and
``[homeassistant]``.

Each configures something several components share (the spool file, the broker connection,
the command queues, the pin library) or the agent as a whole (its metrics endpoint); the
``[[sources]]``, ``[[sinks]]`` and ``[[devices]]`` lists have modules of their own.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator

from relay.config.credentials import with_secret, with_url_password
from relay.config.types import Duration, OptionalPath, Section, Size


class SpoolConfig(Section):
    max_size: Size = ByteSize(256_000_000)
    when_full: Literal["reject", "drop_oldest"] = "reject"
    durability: Literal["full", "normal", "memory"] = "full"
    # The longest an MQTT message or GPIO edge may wait in memory for its commit, so that
    # one commit covers several (SD card wear); its producer hears "stored" only after it.
    commit_interval: Duration = timedelta(0)

    @field_validator("commit_interval")
    @classmethod
    def _short(cls, interval: timedelta) -> timedelta:
        if interval > timedelta(seconds=10):
            raise ValueError('must be at most "10s" (a broker waits for its acknowledgements)')
        return interval


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
    # A Mosquitto config on this box, for check-config to look at (relay.mqtt.mosquitto).
    broker_config: OptionalPath = Path("/etc/mosquitto/mosquitto.conf")

    @property
    def local(self) -> bool:
        """Whether the broker runs on this box (so its config may be here to read)."""
        host = self.host.lower()
        return host in ("localhost", "::1", socket.gethostname().lower()) or host.startswith("127.")

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        return with_secret(data, "password_file", "password")


class CommandsConfig(Section):
    mqtt_topic: str = ""
    amqp_queue: str = ""
    amqp_url: SecretStr | None = None  # default: the url of the first amqp sink
    amqp_password_file: OptionalPath = None
    ttl_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        """``amqp_password_file``'s content replaces the password in ``amqp_url``."""
        if isinstance(data, dict) and data.get("amqp_password_file") and not data.get("amqp_url"):
            raise ValueError("amqp_password_file needs amqp_url (amqp://USER@host/)")
        return with_url_password(
            data,
            url_key="amqp_url",
            file_key="amqp_password_file",
            user_required="amqp_password_file needs a user name in amqp_url (amqp://USER@host/)",
        )

    @field_validator("mqtt_topic")
    @classmethod
    def _device_level(cls, topic: str) -> str:
        if topic and (not topic.endswith("/+") or "#" in topic or "+" in topic[:-1]):
            raise ValueError('must end with "/+" (the device name) and hold no other wildcard')
        return topic


class GpioConfig(Section):
    # gpiozero's pin factory: "lgpio" on a Pi (Bookworm and later), "mock" for demos/tests.
    pin_factory: Literal["lgpio", "rpigpio", "pigpio", "native", "mock"] = "lgpio"


_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


def _host_port(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:9464", "localhost:9464", "[::1]:9464" as (host, port); else ValueError."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host:
        raise ValueError('expected "host:port", e.g. "127.0.0.1:9464" ("0.0.0.0:9464": all)')
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the host in [brackets] is not an IPv6 address") from None
    elif not _HOSTNAME.match(host) or (host.replace(".", "").isdigit() and not _ipv4(host)):
        # An IPv4 address matches the host name pattern; an IPv6 one needs its brackets
        # (its colons would be taken for the port's).
        raise ValueError("the host is not a host name or IP address (IPv6 goes in [brackets])")
    return host, int(port)


def _ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


class MetricsConfig(Section):
    # The Prometheus endpoint's "host:port"; "" (the default): no port, no server thread.
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, listen: str) -> str:
        if listen:
            _host_port(listen)
        return listen

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when metrics are off."""
        return _host_port(self.listen) if self.listen else None


class HomeAssistantConfig(Section):
    # Home Assistant MQTT discovery over the [mqtt] connection (relay.homeassistant).
    discovery: bool = False
    discovery_prefix: str = Field("homeassistant", min_length=1)
    birth_topic: str = Field("homeassistant/status", min_length=1)  # HA says "online" here
    min_interval: Duration = timedelta(seconds=10)  # between two state publishes, at least

    @field_validator("discovery_prefix", "birth_topic")
    @classmethod
    def _plain_topic(cls, topic: str) -> str:
        if "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError("must be a topic name, without wildcards (+, #)")
        return topic

    @field_validator("min_interval")
    @classmethod
    def _at_least_a_second(cls, interval: timedelta) -> timedelta:
        if interval < timedelta(seconds=1):
            raise ValueError('must be at least "1s"')
        return interval
