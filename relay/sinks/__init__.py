"""Sinks: where events go. Each one sends a batch or raises exactly one of two errors.

A sink's ``send`` is called by its forwarder's thread only, one batch at a time, in spool
order. It returns once the far end has taken every event of the batch; otherwise it raises
``TransientError`` (retry later) or ``PermanentError`` (this batch will never be taken),
with ``delivered`` saying how many events at the front were taken anyway.

A sink that can take several sends at once (:class:`WindowedSink`: the HTTP sink with
``max_in_flight``) is also called through ``send_at`` from several threads, with each send's
:class:`Position` in the sink's sequence, which it shows the far end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relay.event import Event


class Sink(Protocol):
    name: str

    def send(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Position:
    """Where a send's events stand in their sink's sequence: their spool seqs (increasing,
    not contiguous), and the seq of the event before the first (the sink's cursor when they
    were leased), so that a receiver can put requests back in order and see a gap."""

    seqs: tuple[int, ...]
    previous: int


@runtime_checkable
class WindowedSink(Sink, Protocol):
    def send_at(self, events: Sequence[Event], position: Position) -> None:
        """As ``send``; safe to call from several threads at once."""
