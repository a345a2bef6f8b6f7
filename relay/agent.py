"""The agent: opens the spool, starts the components (built by ``relay.wiring``, the only
module that knows the concrete ones), supervises them, and stops them in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO

from relay import wiring
from relay.config import Settings
from relay.doorbell import Doorbell
from relay.errors import AlreadyRunning, SpoolError
from relay.spool import Spool
from relay.wiring import Component

log = logging.getLogger(__name__)


class Agent:
    """Owns the spool and the components; :meth:`run` is what ``relay run`` calls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool: Spool | None = None
        self.components: list[Component] = []
        self._lock_file: IO[str] | None = None
        self._doorbell: Doorbell | None = None
        self.ready = threading.Event()  # set once everything has started

    def start(self) -> None:
        """Open the spool and start every component. Raises ``RelayError`` subclasses."""
        s = self.settings
        self._lock_file = _lock_state_dir(s.state_dir)
        self.spool = Spool.open(
            s.state_dir,
            durability=s.spool.durability,
            max_bytes=int(s.spool.max_size),
            when_full=s.spool.when_full,
            check=True,
        )
        self.spool.register_sinks([sink.name for sink in s.sinks])
        self._doorbell = Doorbell(s.state_dir, self.spool.notify)
        try:
            self._doorbell.start()
        except OSError as exc:
            raise SpoolError(str(exc)) from None
        self.components = self._build()
        for component in self.components:
            component.start()
        self.ready.set()
        stats = self.spool.stats()
        log.info(
            "relay started: node %s, spool %s (%d events queued), %d sink(s), %d source(s)",
            s.node,
            stats.path,
            stats.rows,
            len(s.sinks),
            len(s.sources),
        )

    def _build(self) -> list[Component]:
        assert self.spool is not None
        return wiring.components(self.settings, self.spool)

    def run(self, stop: threading.Event) -> None:
        """Start, wait for ``stop`` (set by a signal handler), then stop cleanly."""
        try:
            self.start()
            stop.wait()
            log.info("stopping")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop components in reverse order, then flush and close the spool. Idempotent."""
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:  # one component failing to stop must not keep the spool open
                log.exception("%s did not stop cleanly", component.name)
        self.components = []
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold ``<state_dir>/relay.lock`` for the agent's lifetime: one agent per spool."""
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        f = (state_dir / "relay.lock").open("a+")
    except OSError as exc:
        raise SpoolError(f"cannot use state_dir {state_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(
            f"another relay (pid {pid}) is running with state_dir {state_dir}"
        ) from None
    with contextlib.suppress(OSError):
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
    return f
