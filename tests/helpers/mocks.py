"""In-memory twins of relay's two outward boundaries, in the style of ``httpx.MockTransport``:
a ``MockSink`` (relay.sinks.Sink) and a ``MockDevice`` (relay.devices.Device), each built
around a handler that decides the outcome of every call, and each recording what it got.

    sink = MockSink(lambda events: TransientError("HTTP 503") if len(events) > 1 else None)
    lamp = MockDevice(in_turn(DeviceUnavailable("refused"), None))

A handler returns None for success, or returns (or raises) the exception the call raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from relay.event import Event

SinkHandler = Callable[[Sequence[Event]], BaseException | None]
DeviceHandler = Callable[[str, Mapping[str, Any], str], BaseException | None]


def in_turn(*outcomes: BaseException | None) -> Callable[..., BaseException | None]:
    """A handler giving ``outcomes`` one per call, then success for every call after."""
    left = list(outcomes)
    return lambda *call: left.pop(0) if left else None


def payloads(events: Iterable[Event]) -> list[Any]:
    return [e.payload for e in events]


class MockSink:
    """A sink whose ``send`` asks ``handler(events)`` (default: every batch is taken).

    ``batches`` holds the payloads of every batch sent, ``events`` the batches themselves,
    ``attempts`` the monotonic time of each send; ``closed`` turns true on ``close``. It has
    no ``wait``/``wake``: the forwarder waits on the spool for it, as for the HTTP sink.
    """

    def __init__(
        self,
        handler: SinkHandler | None = None,
        *,
        name: str = "fake",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.handler: SinkHandler = handler or (lambda events: None)
        self.events: list[list[Event]] = []
        self.batches: list[list[Any]] = []
        self.attempts: list[float] = []
        self.closed = False
        self._clock = clock

    def send(self, events: Sequence[Event]) -> None:
        self.attempts.append(self._clock())
        self.events.append(list(events))
        self.batches.append(payloads(events))
        error = self.handler(events)
        if error is not None:
            raise error

    def close(self) -> None:
        self.closed = True


class MockDevice:
    """A device whose ``run`` asks ``handler(action, args, command_id)`` (default: done).

    ``calls`` holds ``(command_id, action)`` of every run, ``attempts`` the monotonic time
    of each; ``closed`` turns true on ``close``. The allowlist (``actions``) and the actions
    never retried are the executor's to check, as for a real driver.
    """

    def __init__(
        self,
        handler: DeviceHandler | None = None,
        *,
        name: str = "lamp",
        actions: Iterable[str] = ("on", "off", "toggle"),
        not_retried: Iterable[str] = ("toggle",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.actions = frozenset(actions)
        self.not_retried = frozenset(not_retried)
        self.handler: DeviceHandler = handler or (lambda action, args, command_id: None)
        self.calls: list[tuple[str, str]] = []
        self.attempts: list[float] = []
        self.closed = False
        self._clock = clock

    def run(self, action: str, args: Mapping[str, Any], *, command_id: str, timeout: float) -> None:
        self.attempts.append(self._clock())
        self.calls.append((command_id, action))
        error = self.handler(action, args, command_id)
        if error is not None:
            raise error

    def close(self) -> None:
        self.closed = True
