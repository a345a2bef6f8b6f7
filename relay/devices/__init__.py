"""Device drivers: what device commands run against (GPIO output, MQTT publish, HTTP call).

A driver runs one action at a time, on the command executor's thread. ``run`` returns when
the device took the action; it raises ``DeviceUnavailable`` when the device could not be
reached before taking it (the executor reconnects and retries the same command) and
``DeviceError`` for anything else (the command failed and is never re-run). ``run`` must
return within ``timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Device(Protocol):
    name: str
    actions: frozenset[str]  # the allowlist: any other action fails without reaching the device
    # Actions that must never be retried after a connection error, even before the device
    # confirmed anything (a toggle applied twice is a toggle undone).
    not_retried: frozenset[str]

    def run(
        self, action: str, args: Mapping[str, Any], *, command_id: str, timeout: float
    ) -> None: ...

    def close(self) -> None: ...


def render(template: Any, *, command_id: str, action: str, args: Mapping[str, Any]) -> Any:
    """Fill a JSON template: a string leaf "{action}", "{id}", "{args}" or "{args.NAME}" is
    replaced by that value (any JSON type); everything else is kept. Values are placed, never
    spliced into strings, so a command cannot inject structure or text."""
    if isinstance(template, dict):
        return {
            k: render(v, command_id=command_id, action=action, args=args)
            for k, v in template.items()
        }
    if isinstance(template, list):
        return [render(v, command_id=command_id, action=action, args=args) for v in template]
    if not isinstance(template, str) or not (template.startswith("{") and template.endswith("}")):
        return template
    fields: dict[str, Any] = {"{action}": action, "{id}": command_id, "{args}": dict(args)}
    if template in fields:
        return fields[template]
    if template.startswith("{args."):
        return args.get(template[6:-1])
    return template
