"""The spool's wake-ups: who is told, and how, that new work may be there.

Two version counters, each with its condition: ``version`` moves whenever new work may have
arrived (events, redeliveries, commands); ``commands_version`` only for device commands, so
that the command executor does not wake for every event. Waiters block on a condition, or,
when they cannot block (a sink whose connection needs its thread), subscribe a callback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Changes:
    """Thread-safe version counters with waits and subscriptions; :meth:`close` releases
    every waiter for good."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self._commands_changed = threading.Condition()
        self._commands_version = 0
        self._listeners: dict[object, Callable[[], None]] = {}  # replaced, never mutated
        self._closed = False

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    @property
    def commands_version(self) -> int:
        with self._commands_changed:
            return self._commands_version

    def wait(self, version: int, timeout: float | None) -> int:
        """The version once it differs from ``version``, the timeout passed, or closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._closed, timeout)
            return self._version

    def wait_for_command(self, version: int, timeout: float | None) -> int:
        """As :meth:`wait`, for :attr:`commands_version`."""
        with self._commands_changed:
            self._commands_changed.wait_for(
                lambda: self._commands_version != version or self._closed, timeout
            )
            return self._commands_version

    def notify(self) -> None:
        """Move both versions, wake their waiters, then call the subscribers."""
        self.notify_commands()
        with self._changed:
            self._version += 1
            self._changed.notify_all()
            listeners = self._listeners
        for callback in listeners.values():  # outside the lock: a callback may read version
            callback()

    def notify_commands(self) -> None:
        """Move :attr:`commands_version` only, and wake its waiters."""
        with self._commands_changed:
            self._commands_version += 1
            self._commands_changed.notify_all()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every :meth:`notify` until the returned function is
        called (which unsubscribes; calling it again does nothing)."""
        key = object()
        with self._changed:
            self._listeners = {**self._listeners, key: callback}

        def unsubscribe() -> None:
            with self._changed:
                self._listeners = {k: v for k, v in self._listeners.items() if k is not key}

        return unsubscribe

    def close(self) -> None:
        """Wake every waiter; from now on no wait blocks."""
        for cond in (self._changed, self._commands_changed):
            with cond:
                self._closed = True
                cond.notify_all()
