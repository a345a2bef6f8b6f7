"""The config file (a public interface: users' files must keep working), validated by
pydantic: one model per component.

Lookup: ``--config PATH``, else ``$RELAY_CONFIG``, else ``/etc/relay.toml``. Environment
variables override the file (``RELAY_`` prefix, ``__`` between levels, so
``RELAY_SPOOL__MAX_SIZE=1GB``; a list such as ``sinks`` is replaced whole, as JSON).

Secrets: every secret key (``password``, ``token``) has a ``*_file`` twin. A relative
``*_file`` names a file in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``). Secrets
are held as ``SecretStr`` and are masked wherever the config is printed; a problem report
never includes the offending value.

Every public name is importable from here (``from relay.config import HttpSinkConfig``);
the modules are:

    types.py        Duration, Size, OptionalPath, the ``Section`` base, URL checks, mask_url
    credentials.py  secrets read from ``*_file`` and ``$CREDENTIALS_DIRECTORY``
    sections.py     the single tables: [spool], [mqtt], [commands], [gpio], [metrics],
                    [homeassistant]
    sources.py      [[sources]]: mqtt, gpio
    sinks.py        [[sinks]]: http, amqp, redis, and the retry policy they share
    devices.py      [[devices]]: gpio, mqtt, http
    settings.py     ``Settings``: the whole file, its cross-table checks; the environment
    problems.py     validation errors as one line per problem, never echoing a value
    permissions.py  ``permission_problems``: a file others may read (with secrets) or write
    __init__.py     config_path, load, dump
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relay.config.devices import (
    Action,
    DeviceConfig,
    DeviceName,
    GpioDeviceConfig,
    HttpDeviceConfig,
    MqttDeviceConfig,
)
from relay.config.permissions import permission_problems
from relay.config.problems import first_line, problems
from relay.config.sections import (
    CommandsConfig,
    GpioConfig,
    HomeAssistantConfig,
    MetricsConfig,
    MqttConfig,
    SpoolConfig,
)
from relay.config.settings import Settings, environment, overlay
from relay.config.sinks import (
    AmqpSinkConfig,
    HttpSinkConfig,
    RedisSinkConfig,
    SinkBase,
    SinkConfig,
)
from relay.config.sources import GpioSourceConfig, MqttSourceConfig, SourceConfig
from relay.config.types import Duration, OptionalPath, Section, Size, mask_url
from relay.errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "Action",
    "AmqpSinkConfig",
    "CommandsConfig",
    "DeviceConfig",
    "DeviceName",
    "Duration",
    "GpioConfig",
    "GpioDeviceConfig",
    "GpioSourceConfig",
    "HomeAssistantConfig",
    "HttpDeviceConfig",
    "HttpSinkConfig",
    "MetricsConfig",
    "MqttConfig",
    "MqttDeviceConfig",
    "MqttSourceConfig",
    "OptionalPath",
    "RedisSinkConfig",
    "Section",
    "Settings",
    "SinkBase",
    "SinkConfig",
    "Size",
    "SourceConfig",
    "SpoolConfig",
    "config_path",
    "dump",
    "load",
    "mask_url",
    "permission_problems",
]

DEFAULT_PATH = Path("/etc/relay.toml")


def config_path(cli_path: str | os.PathLike[str] | None) -> Path:
    """Where the config is: ``--config``, else ``$RELAY_CONFIG``, else /etc/relay.toml."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("RELAY_CONFIG")
    return Path(env) if env else DEFAULT_PATH


def load(path: Path, *, other: str = "pass --config PATH") -> Settings:
    """Read, validate and return the config; ``ConfigError`` lists every problem.

    ``other``: how the caller names another file, for the line saying that this one does
    not exist (``relay.push`` from Python has ``config_path=``, not ``--config``)."""
    where = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)  # syntax errors first, with their line and column
    except FileNotFoundError:
        raise ConfigError([f"{where}: no such file (create it, or {other})"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: not valid TOML: {exc}"]) from None
    try:
        env = environment()
    except ValueError as exc:
        # pydantic-settings could not decode an environment value (say, bad JSON in a list):
        # its SettingsError is a ValueError, and catching it as one spares importing it.
        raise ConfigError([f"{where}: environment override: {first_line(exc)}"]) from None
    try:
        return Settings.model_validate(overlay(data, env))
    except ValidationError as exc:
        raise ConfigError([f"{where}: {line}" for line in problems(exc)]) from None


def dump(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data, secrets masked, for ``relay check-config``."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for sink, model in zip(data["sinks"], settings.sinks, strict=True):
        if isinstance(model, AmqpSinkConfig | RedisSinkConfig):
            sink["url"] = mask_url(model.url.get_secret_value())
    if settings.commands.amqp_url is not None:
        data["commands"]["amqp_url"] = mask_url(settings.commands.amqp_url.get_secret_value())
    return data
