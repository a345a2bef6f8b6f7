"""Wake the agent from another process, without a TCP port and without polling.

``relay push`` (or ``relay.push()``) writes straight into the spool file, then rings: one
datagram to the Unix socket ``<state_dir>/wake.sock`` that the running agent listens on. The
agent's forwarders wake within milliseconds. Nobody listening (the agent is stopped) is fine:
the event waits in the spool and the agent finds it when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "wake.sock"


def ring(state_dir: Path) -> None:
    """Tell a running agent that the spool has new work. Never fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        # No agent (no socket, or a stale one), or its buffer is full of earlier rings that
        # will wake it anyway: either way there is nothing more to do.
        with contextlib.suppress(OSError):
            s.sendto(b"!", str(state_dir / SOCKET_NAME))


class Doorbell:
    """The agent's side: a thread that calls ``on_ring`` for every datagram received."""

    def __init__(self, state_dir: Path, on_ring: Callable[[], None]) -> None:
        self.path = state_dir / SOCKET_NAME
        self._on_ring = on_ring
        self._stop = secrets.token_bytes(16)  # only close() knows it: no one else can stop us
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._loop, name="doorbell", daemon=True)

    def start(self) -> None:
        # A socket file left by a killed agent refuses binding; the agent's state-dir lock
        # guarantees no live agent owns it.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        try:
            self._sock.bind(str(self.path))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.path}: {exc.strerror}") from None
        os.chmod(self.path, 0o660)
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            # recv() is not woken by close() from another thread; a datagram is.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(self._stop, str(self.path))
            self._thread.join()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _loop(self) -> None:
        while True:
            data = self._sock.recv(64)
            if data == self._stop:
                return
            self._on_ring()
