"""httpx as relay uses it, for the HTTP sink and HTTP devices: one way to build a client,
and a total deadline per request.

httpx has no total deadline (encode/httpx#1450): its timeouts apply to each socket
operation, so a server that trickles one byte a second never trips a 10 s read timeout, and
the request hangs as long as the server likes. The fix used here: the client keeps one
connection (``max_connections=1``), httpcore's ``trace`` extension tells us each socket it
opens, and a watchdog thread shuts that socket down when the request's deadline passes; the
blocked read then fails at once and the caller sees ``expired``. The watchdog sleeps until
the next deadline and not at all while idle.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from relay import __version__

log = logging.getLogger(__name__)


def client(
    *,
    timeout: float,
    headers: Mapping[str, str] = {},
    verify: ssl.SSLContext | bool = True,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """A client of one keep-alive connection (so the :class:`Deadline` knows which socket
    to cut) that never follows redirects (a redirect is the far end's answer, not ours to
    chase) and says it is relay."""
    quiet_httpx()
    return httpx.Client(
        transport=transport,
        verify=verify,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers={"User-Agent": f"relay/{__version__}", **headers},
        follow_redirects=False,
    )


def timed_out(exc: httpx.HTTPError) -> bool:
    """A read, write or pool timeout: the timeout passed with the request under way. (A
    connect timeout is not: nothing reached the server, it is "cannot reach".)"""
    return isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)


def describe(exc: httpx.HTTPError) -> str:
    """A short reason: the innermost cause's text (say, "Connection refused")."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause) or type(cause).__name__
    return text if isinstance(cause, httpx.HTTPError) else f"{type(exc).__name__}: {text}"


def quiet_httpx() -> None:
    # httpx logs every request at INFO ("HTTP Request: POST <url> ..."): a journal line per
    # event delivered, with the URL (and a token in its query, if any). Unless relay itself
    # logs at DEBUG, leave those out; failures reach the log through the forwarder, once.
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        httpx_log.setLevel(logging.WARNING)


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
