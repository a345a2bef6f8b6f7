"""relay: a home-automation event relay agent. See README.md and docs/ARCHITECTURE.md."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.event import Event

__version__ = "0.1.0"
__all__ = ["__version__", "push"]


def push(
    name: str,
    payload: Any = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
) -> Event:
    """Put one event in relay's spool; returns once it is on disk. See ``relay push``.

    The config is ``config_path``, else ``$RELAY_CONFIG``, else /etc/relay.toml;
    ``relay.errors.ConfigError`` when it is missing or wrong."""
    from relay.producer import push as _push  # keep ``import relay`` light

    return _push(name, payload, config_path=config_path, other_config="pass config_path=...")
