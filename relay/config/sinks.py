"""The ``[[sinks]]`` tables: where events go, one model per ``type`` (http, amqp, redis), with
the retry policy every sink shares."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from relay.config.credentials import with_secret, with_url_password
from relay.config.types import Duration, OptionalPath, Section, check_url


class SinkBase(Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    max_retries: int = Field(5, ge=0)
    max_age: Duration | None = None
    # 100 ms: measured against a remote failing 20 % of requests at random (flaky_bench.py),
    # 0.5 s drained 72 events/s, 0.25 s 123, 0.1 s 260 (no failures: ~900).
    retry_initial: Duration = timedelta(seconds=0.1)
    retry_factor: float = Field(2.0, ge=1.0)
    retry_max: Duration = timedelta(minutes=5)

    @property
    def in_flight(self) -> int:
        """Sends under way at once (only the HTTP sink has more than one)."""
        return 1


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
    max_in_flight: int = Field(1, ge=1, le=64)

    @property
    def batch(self) -> int:
        """Events one send may carry (a JSON array of them)."""
        return self.batch_max

    @property
    def in_flight(self) -> int:
        """Requests under way at once, each on a keep-alive connection of its own."""
        return self.max_in_flight

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return check_url(url, ("http", "https"))

    @model_validator(mode="before")
    @classmethod
    def _load_token(cls, data: Any) -> Any:
        return with_secret(data, "token_file", "token")


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

    @property
    def batch(self) -> int:
        """Events one send may carry (published, then confirmed together)."""
        return self.window

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, url: SecretStr) -> SecretStr:
        check_url(url.get_secret_value(), ("amqp", "amqps"))
        return url

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        """``password_file``'s content replaces the password in ``url``."""
        return with_url_password(
            data, user_required="password_file needs a user name in url (amqp://USER@host/)"
        )

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


class RedisSinkConfig(SinkBase):
    type: Literal["redis"]
    url: SecretStr  # redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss:// (TLS)
    password_file: OptionalPath = None
    stream: str = Field(min_length=1)
    maxlen: int | None = Field(None, ge=1)  # XADD MAXLEN ~ this; None: never trim
    ca_file: OptionalPath = None
    window: int = Field(100, ge=1, le=10_000)
    timeout_s: float = Field(10.0, gt=0)

    @property
    def batch(self) -> int:
        """Events one send may carry (XADDs pipelined in one round trip)."""
        return self.window

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: SecretStr) -> SecretStr:
        db = urlsplit(check_url(url.get_secret_value(), ("redis", "rediss"))).path.strip("/")
        if db and not db.isdigit():
            raise ValueError("the path of a redis:// url is a database number, as in /0")
        return url

    @model_validator(mode="before")
    @classmethod
    def _load_password(cls, data: Any) -> Any:
        """``password_file``'s content replaces the password in ``url``; the user name, if
        any, stays (Redis 6 ACL users; none means the ``default`` user)."""
        return with_url_password(data)

    @model_validator(mode="after")
    def _tls_with_rediss(self) -> RedisSinkConfig:
        if self.ca_file and urlsplit(self.url.get_secret_value()).scheme != "rediss":
            raise ValueError("ca_file is for rediss:// urls (TLS); this url is redis://")
        return self


SinkConfig = Annotated[
    HttpSinkConfig | AmqpSinkConfig | RedisSinkConfig, Field(discriminator="type")
]
