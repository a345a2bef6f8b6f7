"""Sinks: where events go. Each one sends a batch or raises exactly one of two errors.

A sink's ``send`` is called by its forwarder's thread only, one batch at a time, in spool
order. It returns once the far end has taken every event of the batch; otherwise it raises
``TransientError`` (retry later) or ``PermanentError`` (this batch will never be taken),
with ``delivered`` saying how many events at the front were taken anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relay.event import Event


class Sink(Protocol):
    name: str

    def send(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...
