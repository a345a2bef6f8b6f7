"""Local producers: ``relay push``, ``relay command`` and the Python call ``relay.push()``.

They write into the spool file directly, so they work whether the agent runs or not, then
ring the agent's doorbell so that a running agent forwards the event at once.
"""

from __future__ import annotations

import os
import time
from typing import Any

from relay import config, statelock
from relay.doorbell import ring
from relay.errors import NotRunning
from relay.event import Command, Event, new_id
from relay.spool import Spool

MAX_NAME = 1024
LOOK_EVERY_S = 1.0  # how often a client waiting for an outcome checks that an agent runs

CommandState = tuple[str, str | None, str | None]  # state, status, error


def push(
    name: str,
    payload: Any = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    source: str = "push",
    other_config: str = "pass --config PATH",
) -> Event:
    """Store one event durably and return it; when this returns, the event is on disk.

    Raises ``ConfigError`` for a bad config, ``ValueError`` for a bad name or payload,
    ``SpoolFull`` when the spool is full and ``SpoolError`` when it cannot be written.
    ``other_config``: how the caller names another config file (``config.load``).
    """
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"event name must be 1 to {MAX_NAME} printable characters")
    settings = config.load(config.config_path(config_path), other=other_config)
    event = Event.new(node=settings.node, source=source, name=name, payload=payload)
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        spool.put(event)
    ring(settings.state_dir)
    return event


def command(
    device: str,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    command_id: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> tuple[Command, bool]:
    """Queue a device command for the agent; returns it and whether it was new (False: its
    id was seen before, so it is not queued again). ``ValueError`` for an unknown device or
    a malformed command."""
    settings = config.load(config.config_path(config_path))
    known = {d.name for d in settings.devices}
    if device not in known:
        raise ValueError(
            f"no device named {device!r} in the config (known: "
            f"{', '.join(sorted(known)) or 'none'})"
        )
    cmd = Command.of(
        id=command_id or new_id(),
        device=device,
        action=action,
        args=args or {},
        source="cli",
        received_at=time.time(),
    )
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        recorded = spool.record_command(cmd)
    ring(settings.state_dir)
    return cmd, recorded


def command_state(settings: config.Settings, command_id: str) -> CommandState | None:
    """(state, status, error) of a command this spool has seen, else None."""
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        return spool.command_state(command_id)


def wait_for_outcome(
    settings: config.Settings, command_id: str, timeout: float
) -> tuple[str, str | None] | None:
    """(status, error) once the agent has run the command, or None after ``timeout``.
    ``NotRunning`` as soon as no agent runs on the state directory: nothing would run it.

    Another process is the one running it, so this looks at the spool file every 100 ms,
    and at the agent's lock (``relay.statelock``) every second: a client waiting on
    purpose, not the agent polling.
    """
    deadline = time.monotonic() + timeout
    next_look = time.monotonic()
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        while True:
            state = spool.command_state(command_id)
            if state is not None and state[0] == "done":
                return state[1] or "failed", state[2]
            if time.monotonic() > deadline:
                return None
            if time.monotonic() >= next_look:
                next_look += LOOK_EVERY_S
                if statelock.held(settings.state_dir) is False:
                    raise NotRunning(
                        f"relay is not running (state_dir {settings.state_dir}): command "
                        f"{command_id} stays queued, and runs if relay starts within ttl_s "
                        f"({settings.commands.ttl_s:g}s) of when it was queued"
                    )
            time.sleep(0.1)
