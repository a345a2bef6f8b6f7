"""The config file of DESIGN.md, read by pydantic-settings: one model per component.

Lookup: ``--config PATH``, else ``$RELAY_CONFIG``, else ``/etc/relay.toml``. Environment
variables override the file (``RELAY_`` prefix, ``__`` between levels, so
``RELAY_SPOOL__MAX_SIZE=1GB``; a list such as ``sinks`` is replaced whole, as JSON).

Secrets: every secret key (``password``, ``token``) has a ``*_file`` twin. A relative
``*_file`` names a file in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``). Secrets
are held as ``SecretStr`` and are masked wherever the config is printed; a problem report
never includes the offending value.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from relay.errors import ConfigError

DEFAULT_PATH = Path("/etc/relay.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def _parse_duration(value: Any) -> Any:
    """ "30s", "5m", "7d", "250ms" or a bare number of seconds, as a timedelta."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError('expected a duration such as "30s", "5m", "7d" or "250ms"')
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    return value


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# An optional file: "" (how the example config shows "not set") means None, not ".".
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
Size = ByteSize  # "256MB" (powers of 1000) or "256MiB" (powers of 1024), or bytes


class Section(BaseModel):
    """Every table of the file: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _with_secret(data: Any, file_key: str, key: str) -> Any:
    """Before validation: put the content of ``file_key``'s file under ``key``."""
    if isinstance(data, dict) and data.get(file_key):
        data = {**data, key: _read_secret(Path(data[file_key]), file_key)}
    return data


def _read_secret(path: Path, key: str) -> str:
    if not path.is_absolute():
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ValueError(
                f"{key} {str(path)!r} is relative: give an absolute path, or run under systemd "
                "with LoadCredential= so that $CREDENTIALS_DIRECTORY is set"
            )
        path = Path(creds) / path
    try:
        # A trailing newline is an editor's, never part of the secret.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {key} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key} {path} is not UTF-8 text") from None


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
        return _with_secret(data, "password_file", "password")


class MqttSourceConfig(Section):
    type: Literal["mqtt"]
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    max_payload: Size = ByteSize(256 * 1024)


class GpioSourceConfig(Section):
    type: Literal["gpio"]
    pin: int | str
    name: str = Field(min_length=1, max_length=64)
    # true: pull-up, active when the switch closes to ground; false: pull-down, active high;
    # "none": a floating input driven by the device, which then needs active_high.
    pull_up: bool | Literal["none"] = True
    active_high: bool | None = None
    bounce_ms: int = Field(50, ge=0, le=10_000)
    on_active: str = Field("active", min_length=1, max_length=256)
    on_inactive: str = Field("inactive", min_length=1, max_length=256)
    initial_event: bool = True

    @model_validator(mode="after")
    def _active_level(self) -> GpioSourceConfig:
        if (self.pull_up == "none") != (self.active_high is not None):
            raise ValueError('set active_high when (and only when) pull_up = "none"')
        return self


SourceConfig = Annotated[MqttSourceConfig | GpioSourceConfig, Field(discriminator="type")]


class SinkBase(Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    max_retries: int = Field(5, ge=0)
    max_age: Duration | None = None
    retry_initial: Duration = timedelta(seconds=0.5)
    retry_factor: float = Field(2.0, ge=1.0)
    retry_max: Duration = timedelta(minutes=5)


class HttpSinkConfig(SinkBase):
    type: Literal["http"]
    url: str
    token: SecretStr | None = None
    token_file: OptionalPath = None
    headers: dict[str, str] = {}
    timeout_s: float = Field(10.0, gt=0)
    ca_file: OptionalPath = None
    cert_file: OptionalPath = None
    key_file: OptionalPath = None
    batch_max: int = Field(1, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _check_url(url, ("http", "https"))

    @model_validator(mode="before")
    @classmethod
    def _load_token(cls, data: Any) -> Any:
        return _with_secret(data, "token_file", "token")


class AmqpSinkConfig(SinkBase):
    type: Literal["amqp"]
    url: SecretStr
    password_file: OptionalPath = None
    exchange: str = ""
    routing_key: str = ""
    queue: str = ""
    ca_file: OptionalPath = None
    window: int = Field(100, ge=1, le=10_000)
    heartbeat_s: int = Field(30, ge=0, le=600)
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, url: SecretStr) -> SecretStr:
        _check_url(url.get_secret_value(), ("amqp", "amqps"))
        return url

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        """``password_file``'s content replaces the password in ``url`` (percent-encoded)."""
        from urllib.parse import quote  # here, so that this change stays inside the class

        if not (isinstance(data, dict) and data.get("password_file")):
            return data
        password = _read_secret(Path(data["password_file"]), "password_file")
        url = data.get("url")
        if isinstance(url, SecretStr):
            url = url.get_secret_value()
        if not isinstance(url, str):
            return data  # the url's own validation reports what is wrong with it
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        if not at or not user:
            raise ValueError("password_file needs a user name in url (amqp://USER@host/)")
        netloc = f"{user}:{quote(password, safe='')}@{hostport}"
        return {**data, "url": urlunsplit(parts._replace(netloc=netloc))}

    @model_validator(mode="after")
    def _routable(self) -> AmqpSinkConfig:
        if not (self.exchange or self.routing_key or self.queue):
            raise ValueError("set queue, or exchange and routing_key: events need a destination")
        return self

    @model_validator(mode="after")
    def _tls_with_amqps(self) -> AmqpSinkConfig:
        if self.ca_file and urlsplit(self.url.get_secret_value()).scheme != "amqps":
            raise ValueError("ca_file is for amqps:// urls (TLS); this url is amqp://")
        return self


SinkConfig = Annotated[HttpSinkConfig | AmqpSinkConfig, Field(discriminator="type")]


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


Action = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class GpioConfig(Section):
    # gpiozero's pin factory: "lgpio" on a Pi (Bookworm and later), "mock" for demos/tests.
    pin_factory: Literal["lgpio", "rpigpio", "pigpio", "native", "mock"] = "lgpio"


class GpioDeviceConfig(Section):
    name: DeviceName
    type: Literal["gpio"]
    pin: int | str
    active_high: bool = True
    initial: bool | None = False
    actions: list[Action] = ["on", "off", "pulse", "toggle"]


class MqttDeviceConfig(Section):
    name: DeviceName
    type: Literal["mqtt"]
    topic: str = Field(min_length=1, pattern=r"^[^#+\x00]+$")  # no wildcards: a real topic
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    payload: Any = {"state": "{action}"}  # a JSON template: see relay/devices/__init__.py
    actions: list[Action] = ["on", "off"]


class HttpDeviceConfig(Section):
    name: DeviceName
    type: Literal["http"]
    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body: Any = {"id": "{id}", "action": "{action}", "args": "{args}"}
    headers: dict[str, str] = {}
    timeout_s: float = Field(10.0, gt=0)
    actions: list[Action] = ["on", "off"]

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _check_url(url, ("http", "https"))


DeviceConfig = Annotated[
    GpioDeviceConfig | MqttDeviceConfig | HttpDeviceConfig, Field(discriminator="type")
]


def _check_url(url: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL with a host")
    return url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for printing and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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

    @model_validator(mode="after")
    def _command_queue_url(self) -> Settings:
        if self.commands.amqp_queue and self.command_queue_url() is None:
            raise ValueError("commands.amqp_queue needs commands.amqp_url (or an amqp sink)")
        return self

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


def config_path(cli_path: str | os.PathLike[str] | None) -> Path:
    """Where the config is: ``--config``, else ``$RELAY_CONFIG``, else /etc/relay.toml."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("RELAY_CONFIG")
    return Path(env) if env else DEFAULT_PATH


def load(path: Path) -> Settings:
    """Read, validate and return the config; ``ConfigError`` lists every problem."""
    where = str(path)
    try:
        with path.open("rb") as f:
            tomllib.load(f)  # syntax errors first, with their line and column
    except FileNotFoundError:
        raise ConfigError([f"{where}: no such file (create it, or pass --config PATH)"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: not valid TOML: {exc}"]) from None

    from_file = type(
        "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}}
    )
    try:
        settings: Settings = from_file()
    except ValidationError as exc:
        raise ConfigError([f"{where}: {line}" for line in _problems(exc)]) from None
    except SettingsError as exc:
        # pydantic-settings could not decode an environment value (say, bad JSON in a list).
        raise ConfigError([f"{where}: environment override: {_first_line(exc)}"]) from None
    return settings


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        lines.append(f"{_loc(err['loc'])}: {_message(err)}")
    return lines


_TAGS = {"mqtt", "gpio", "http", "amqp", "redis"}


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _TAGS:
            pass  # the discriminated union's tag ("sinks[1].http.url"): noise to a person
        else:
            out += ("." if out else "") + part
        prev = part
    return out or "(top level)"


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and its table)"
    if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
        return "type is missing or unknown"
    return msg.removeprefix("Value error, ")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def dump(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data, secrets masked, for ``relay check-config``."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for sink, model in zip(data["sinks"], settings.sinks, strict=True):
        if isinstance(model, AmqpSinkConfig):
            sink["url"] = mask_url(model.url.get_secret_value())
    if settings.commands.amqp_url is not None:
        data["commands"]["amqp_url"] = mask_url(settings.commands.amqp_url.get_secret_value())
    return data
