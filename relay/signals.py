"""Signals for `relay run`: SIGTERM and SIGINT stop, SIGHUP reloads the config.

A Python-level handler that sets a ``threading.Event`` can deadlock: the handler runs in the
main thread between two bytecodes, possibly while that thread is inside ``Event.set`` for an
earlier signal, holding the lock the handler then waits for (seen here with two signals in
quick succession). So the handlers do nothing at all; the C-level handler writes each signal
number to a socket (``signal.set_wakeup_fd``), and a small thread reads them and sets the
events, as ordinary code.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

STOP = (signal.SIGTERM, signal.SIGINT)
RELOAD = signal.SIGHUP


class SignalListener:
    """Calls ``on_stop()`` for SIGTERM/SIGINT and ``on_reload()`` for SIGHUP, from its own
    thread. Install from the main thread; the previous handlers come back on :meth:`close`."""

    def __init__(self, on_stop: Callable[[], None], on_reload: Callable[[], None]) -> None:
        self._on_stop, self._on_reload = on_stop, on_reload
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)  # set_wakeup_fd requires it
        self._previous: dict[int, object] = {}
        self._old_fd = -1
        self._thread = threading.Thread(target=self._listen, name="signals", daemon=True)

    def start(self) -> None:
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in (*STOP, RELOAD):
            self._previous[sig] = signal.signal(sig, _ignore)
        self._thread.start()

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._old_fd)
        self._write.close()  # ends _listen's recv
        self._thread.join()
        self._read.close()

    def _listen(self) -> None:
        while data := self._read.recv(64):
            for signum in data:
                if signum == RELOAD:
                    self._on_reload()
                elif signum in STOP:
                    self._on_stop()


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: nothing (the wake-up fd carries the signal)."""
