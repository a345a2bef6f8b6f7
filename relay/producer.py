"""Local producers: ``relay push`` and the Python call ``relay.push()``.

They write into the spool file directly, so they work whether the agent runs or not, then
ring the agent's doorbell so that a running agent forwards the event at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from relay import config
from relay.doorbell import ring
from relay.errors import SpoolError
from relay.event import Event
from relay.spool import Spool

MAX_NAME = 1024


def push(
    name: str,
    payload: Any = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    source: str = "push",
) -> Event:
    """Store one event durably and return it; when this returns, the event is on disk.

    Raises ``ConfigError`` for a bad config, ``ValueError`` for a bad name or payload,
    ``SpoolFull`` when the spool is full and ``SpoolError`` when it cannot be written.
    """
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"event name must be 1 to {MAX_NAME} printable characters")
    settings = config.load(config.config_path(config_path))
    event = Event.new(node=settings.node, source=source, name=name, payload=payload)
    with open_spool(settings.spool, settings.state_dir) as spool:
        spool.put(event)
    ring(settings.state_dir)
    return event


def open_spool(cfg: config.SpoolConfig, state_dir: Path) -> Spool:
    """The spool for a short-lived tool (not the agent: no integrity check at open)."""
    if cfg.durability == "memory":
        raise SpoolError(
            'spool durability is "memory": only the running agent holds the queue, so this '
            "command cannot reach it"
        )
    return Spool.open(
        state_dir, durability=cfg.durability, max_bytes=int(cfg.max_size), when_full=cfg.when_full
    )
