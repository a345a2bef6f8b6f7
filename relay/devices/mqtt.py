"""MQTT devices (Zigbee2MQTT, Tasmota, ...): a command is one QoS 1 publish of a payload
template to the device's topic, done when the broker acknowledged it.

The publish goes over the agent's one MQTT connection, passed in as a ``Publisher``; this
module does not know paho. What the connection's errors mean for a command is decided here:
not connected, nothing was sent (retried until the TTL); anything else, the broker may have
it (failed, never repeated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from relay.config import MqttDeviceConfig
from relay.devices import render
from relay.errors import DeviceError, DeviceUnavailable, NotConnected, PublishError


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float
    ) -> None:
        """Publish; raise ``NotConnected`` when nothing was sent, another ``PublishError``
        when the broker did not acknowledge within ``timeout``."""


class MqttDevice:
    not_retried: frozenset[str] = frozenset()

    def __init__(self, cfg: MqttDeviceConfig, publisher: Publisher) -> None:
        self.name = cfg.name
        self.actions = frozenset(cfg.actions)
        self._cfg = cfg
        self._publisher = publisher

    def run(self, action: str, args: Mapping[str, Any], *, command_id: str, timeout: float) -> None:
        payload = render(self._cfg.payload, command_id=command_id, action=action, args=args)
        data = payload if isinstance(payload, str) else json.dumps(payload)
        try:
            self._publisher.publish(
                self._cfg.topic,
                data.encode(),
                qos=self._cfg.qos,
                retain=self._cfg.retain,
                timeout=timeout,
            )
        except NotConnected as exc:
            raise DeviceUnavailable(str(exc)) from exc
        except PublishError as exc:
            raise DeviceError(str(exc)) from exc

    def close(self) -> None:
        pass
