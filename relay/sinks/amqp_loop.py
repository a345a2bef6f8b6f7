"""Driving pika's IOLoop from the one thread that owns it, a condition at a time.

pika's ``SelectConnection`` is callback-driven; the AMQP sink wants blocking calls ("publish,
then return once confirmed", "idle until woken"). :meth:`PikaLoop.run_until` runs the IOLoop
until a condition holds or a timeout passes; the connection's callbacks call :meth:`poke`
after changing what the condition reads, which stops the loop as soon as it holds.

pika is not thread-safe: everything here belongs to the owner's thread except :meth:`wake`,
which goes through ``IOLoop.add_callback_threadsafe``, pika's only thread-safe entry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pika.adapters.select_connection import IOLoop


class PikaLoop:
    """One pika IOLoop, run in bursts by its owner's thread."""

    def __init__(self) -> None:
        self.ioloop = IOLoop()  # hand to SelectConnection(custom_ioloop=...)
        # pika's poller wakes every 5 s even with nothing due (_PollerBase._MAX_POLL_TIMEOUT,
        # "a backstop"). Every timer here is on this loop and wake() interrupts its poll, so
        # the backstop only costs an idle agent 12 wake-ups a minute (P7).
        self.ioloop._poller._MAX_POLL_TIMEOUT = 3600  # type: ignore[attr-defined, unused-ignore]
        self._until: Callable[[], bool] | None = None  # what run_until waits for
        self._woken = threading.Event()

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Run the IOLoop until ``done()`` or ``timeout`` seconds (None: no limit); return
        ``done()``. Callbacks call :meth:`poke`, which stops the loop once ``done()`` holds;
        a stop for another reason (a stale wake, the timer) just goes round again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._until = done
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                timer = None if left is None else self.ioloop.call_later(left, self.ioloop.stop)
                self.ioloop.start()
                if timer is not None:
                    self.ioloop.remove_timeout(timer)
            return True
        finally:
            self._until = None

    def poke(self) -> None:
        """Something changed: stop the loop if what :meth:`run_until` waits for now holds."""
        if self._until is not None and self._until():
            self.ioloop.stop()

    def wait(self, timeout: float | None) -> None:
        """Run the loop until ``timeout`` seconds pass or :meth:`wake` is called. A wake while
        nobody waited ends the next wait."""
        self.run_until(self._woken.is_set, timeout)
        self._woken.clear()

    def wake(self) -> None:
        """End the current or next :meth:`wait`. Any thread; quick; never blocks."""
        if not self._woken.is_set():
            self._woken.set()
            self.ioloop.add_callback_threadsafe(self.ioloop.stop)

    def close(self) -> None:
        self.ioloop.close()
