"""A total deadline for httpx requests, which httpx does not have (encode/httpx#1450).

httpx's timeouts apply to each socket operation: a server that trickles one byte a second
never trips a 10 s read timeout, and the request hangs as long as the server likes. The fix
used here: the client keeps one connection (``max_connections=1``), httpcore's ``trace``
extension tells us each socket it opens, and a watchdog thread shuts that socket down when
the request's deadline passes; the blocked read then fails at once and the caller sees
``expired``. The watchdog sleeps until the next deadline and not at all while idle.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


class Deadline:
    """One per ``httpx.Client`` used by one thread at a time."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._until: float | None = None
        self._sock: socket.socket | None = None
        self._idle = True  # the watchdog waits with no timeout: a new deadline must wake it
        self._closed = False
        self.expired = False
        self._thread = threading.Thread(target=self._watch, name=f"deadline-{name}", daemon=True)
        self._thread.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the socket of every new connection."""
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._cond:
                self._sock = sock

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[None]:
        """Run the block under a deadline of ``seconds``; check :attr:`expired` after."""
        with self._cond:
            self._until = time.monotonic() + seconds
            self.expired = False
            if self._idle:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._until = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._until is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                remaining = self._until - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self.expired, self._until = True, None
                if self._sock is not None:
                    # shutdown(), not close(): it wakes a recv() blocked in another thread.
                    with contextlib.suppress(OSError):
                        self._sock.shutdown(socket.SHUT_RDWR)
