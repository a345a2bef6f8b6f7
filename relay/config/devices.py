"""The ``[[devices]]`` tables: what device commands run against, one model per ``type``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from relay.config.credentials import with_secret
from relay.config.types import OptionalPath, Section, check_url

Action = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


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
    token: SecretStr | None = None
    token_file: OptionalPath = None
    headers: dict[str, str] = {}
    timeout_s: float = Field(10.0, gt=0)
    actions: list[Action] = ["on", "off"]

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return check_url(url, ("http", "https"))

    @model_validator(mode="before")
    @classmethod
    def _load_token(cls, data: Any) -> Any:
        return with_secret(data, "token_file", "token")


DeviceConfig = Annotated[
    GpioDeviceConfig | MqttDeviceConfig | HttpDeviceConfig, Field(discriminator="type")
]
