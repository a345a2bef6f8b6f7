"""gpiozero pin factories by name. Injected into every GPIO device, never set globally
(gpiozero's ``Device.pin_factory`` default would leak between components and tests)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from relay.errors import ConfigError

if TYPE_CHECKING:
    from gpiozero.pins import Factory

_FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}


def pin_factory(name: str) -> Factory:
    """A new factory; ``ConfigError`` (exit 78) when its library is missing or no GPIO."""
    module_name, class_name = _FACTORIES[name]
    try:
        module = importlib.import_module(module_name)
        factory: Factory = getattr(module, class_name)()
        return factory
    except ImportError as exc:
        raise ConfigError(
            [
                f"gpio.pin_factory: {name!r} needs {exc.name or 'a library'} "
                "(pip install 'relay[gpio]'; on a Pi: apt install python3-lgpio; "
                'off a Pi: pin_factory = "mock", as in etc/laptop.toml)'
            ]
        ) from None
    except Exception as exc:  # noqa: BLE001  (each factory fails its own way without a GPIO chip)
        raise ConfigError([f"gpio.pin_factory: {name!r} cannot start: {exc}"]) from None
