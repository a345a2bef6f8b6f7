"""Sources: what turns the outside world into spool writes.

    mqtt.py  events from the MQTT source topics, and device commands from the command topic
             (subscribers of ``relay.mqtt``'s connection)
    gpio.py  GPIO inputs (gpiozero), an event per settled change
    amqp.py  device commands from an AMQP queue (pika)

Each writes through the spool's asynchronous calls and acknowledges its producer only once
the write's commit has returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from relay.errors import SpoolError
from relay.event import Command, Event
from relay.spool import Chain, Done, SourceKey


class Intake(Protocol):
    """What the sources need of the spool (``relay.spool.Spool``)."""

    def put_async(
        self, events: Sequence[Event], done: Done, *, chain: Chain | None = None
    ) -> None: ...

    def put_once_async(
        self,
        event: Event,
        key: SourceKey,
        done: Callable[[bool | None, SpoolError | None], None],
        *,
        chain: Chain | None = None,
    ) -> None: ...

    def reject_async(self, sink: str, event: Event, reason: str, done: Done) -> None: ...

    def record_command(self, cmd: Command) -> bool: ...

    def record_command_async(
        self,
        cmd: Command,
        done: Callable[[bool | None, SpoolError | None], None],
        *,
        key: SourceKey | None = None,
    ) -> None: ...

    def sync(self) -> None: ...
