"""The ``[[sources]]`` tables: where events come from, one model per ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ByteSize, Field, model_validator

from relay.config.types import Section, Size


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
