"""GPIO output devices (a relay board, a garage door opener) on gpiozero.

Actions: ``on``, ``off``, ``pulse`` (on for ``args.ms`` milliseconds, default 500, then off)
and ``toggle``. A pin does not fail to connect, so nothing here is ever retried; ``toggle``
is marked never-retried anyway, since applying it twice undoes it. The pin factory is
injected (``lgpio`` on a Pi, ``MockFactory`` in tests), never set globally.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from gpiozero import OutputDevice
from gpiozero.pins import Factory

from relay.config import GpioDeviceConfig
from relay.errors import DeviceError

MAX_PULSE_MS = 60_000


class GpioDevice:
    not_retried = frozenset({"toggle"})

    def __init__(self, cfg: GpioDeviceConfig, *, pin_factory: Factory) -> None:
        self.name = cfg.name
        self.actions = frozenset(cfg.actions)
        self._out = OutputDevice(
            cfg.pin, active_high=cfg.active_high, initial_value=cfg.initial, pin_factory=pin_factory
        )
        self._stop = threading.Event()

    def run(self, action: str, args: Mapping[str, Any], *, command_id: str, timeout: float) -> None:
        if action == "on":
            self._out.on()
        elif action == "off":
            self._out.off()
        elif action == "toggle":
            self._out.toggle()
        elif action == "pulse":
            self._pulse(args, timeout)
        else:
            raise DeviceError(f"{self.name}: a GPIO output has no action {action!r}")

    def _pulse(self, args: Mapping[str, Any], timeout: float) -> None:
        ms = args.get("ms", 500)
        if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 < ms <= MAX_PULSE_MS:
            raise DeviceError(f"{self.name}: pulse needs 0 < ms <= {MAX_PULSE_MS}")
        if ms / 1000 > timeout:
            raise DeviceError(f"{self.name}: a {ms} ms pulse is longer than the {timeout:g}s left")
        self._out.on()
        try:
            self._stop.wait(ms / 1000)  # relay stopping cuts the pulse short, never leaves it on
        finally:
            self._out.off()

    def close(self) -> None:
        self._stop.set()
        self._out.close()
