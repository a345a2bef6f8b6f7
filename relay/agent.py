"""The agent: opens the spool, starts the components (built by ``relay.wiring``, the only
module that knows the concrete ones), supervises them, and stops them in order.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import IO

from relay import statelock, wiring
from relay.backoff import Backoff
from relay.config import Settings
from relay.doorbell import Doorbell
from relay.errors import DiskUnavailable, SpoolError
from relay.spool import Spool
from relay.spool.file import disk_trouble
from relay.systemd import Notifier, status_text
from relay.wiring import Component

log = logging.getLogger(__name__)

Build = Callable[[Settings, Spool], list[Component]]  # the components, in start order

STATUS_EVERY = 30.0  # seconds between STATUS= refreshes under systemd without a watchdog
DISK_WAIT = Backoff(initial=1.0, factor=2.0, cap=15.0)  # tries at a disk that cannot be written


class Agent:
    """Owns the spool and the components; :meth:`run` is what ``relay run`` calls."""

    def __init__(self, settings: Settings, build: Build = wiring.components) -> None:
        self.settings = settings
        self._build = build
        self.spool: Spool | None = None
        self.components: list[Component] = []
        self._lock_file: IO[str] | None = None
        self._doorbell: Doorbell | None = None
        self.ready = threading.Event()  # set once everything has started
        self._rng = random.Random()

    def open(self) -> None:
        """Take the state dir and open the spool (``DiskUnavailable`` when its disk is full
        or read-only). Idempotent."""
        if self.spool is not None:
            return
        s = self.settings
        self._lock_file = self._lock_file or statelock.take(s.state_dir)
        spool = Spool.configured(s.spool, s.state_dir, agent=True)
        try:
            spool.register_sinks([sink.name for sink in s.sinks])
            doorbell = Doorbell(s.state_dir, spool.notify)
            doorbell.start()
        except (OSError, SpoolError) as exc:
            spool.close()
            if not disk_trouble(s.state_dir) and isinstance(exc, SpoolError):
                raise
            raise (DiskUnavailable if disk_trouble(s.state_dir) else SpoolError)(str(exc)) from None
        self.spool, self._doorbell = spool, doorbell

    def start(self) -> None:
        """Open the spool and start every component. Raises ``RelayError`` subclasses."""
        self.open()
        s = self.settings
        assert self.spool is not None
        # Only what has started is in self.components, so that stop() after a start that
        # failed part way does not stop what never ran (a thread never started cannot join).
        for component in self._build(s, self.spool):
            component.start()
            self.components.append(component)
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

    def run(
        self,
        stop: threading.Event,
        notifier: Notifier | None = None,
        reload: threading.Event | None = None,
    ) -> None:
        """Start, supervise until ``stop`` is set (by a signal handler), then stop cleanly.

        With systemd (``Type=notify``): READY=1 once started, WATCHDOG=1 while every
        component is healthy, STATUS= when the queues change, and at the end STOPPING=1, or
        RELOADING=1 when ``reload`` is set too (the caller then starts a new agent).
        """
        notifier = notifier or Notifier()
        try:
            if self._open_when_writable(stop, notifier):  # else: stopped while it waited
                self.start()
                notifier.ready()
                self._supervise(stop, notifier)
        except BaseException:
            # The caller reports why (a pin library missing, a port taken): that line must
            # be the first a person reads, not a "stopping" before it.
            notifier.stopping()
            self.stop()
            raise
        reloading = reload is not None and reload.is_set()
        log.info("reloading the config" if reloading else "stopping")
        if reloading:
            notifier.reloading()
        else:
            notifier.stopping()
        self.stop()

    def _open_when_writable(self, stop: threading.Event, notifier: Notifier) -> bool:
        """:meth:`open`, waiting while the disk is full or read-only (a card remounted
        read-only after errors, a full disk at boot): one line when the wait starts and one
        when it is over, READY=1 meanwhile with STATUS= saying why, and the watchdog pinged,
        since waiting is what relay should do. False if ``stop`` came first."""
        since: float | None = None
        attempt = 0
        while True:
            try:
                self.open()
            except DiskUnavailable as exc:
                if since is None:
                    since = time.monotonic()
                    log.error("%s; waiting until it can be written, then starting", exc)
                    notifier.ready()  # up, and waiting on purpose
                notifier.status(f"waiting: {exc}")
                attempt += 1
                if _sleep(stop, notifier, DISK_WAIT.delay(attempt, self._rng)):
                    return False
                continue
            if since is not None:
                log.info(
                    "the spool can be written again after %.0fs: starting", time.monotonic() - since
                )
            return True

    def _supervise(self, stop: threading.Event, notifier: Notifier) -> None:
        """Sleep until ``stop``, waking only to ping the watchdog (half its period) or, under
        systemd without a watchdog, to refresh STATUS= now and then."""
        watchdog = notifier.watchdog_interval()
        tick = watchdog if watchdog is not None else (STATUS_EVERY if notifier.enabled else None)
        seen: object = None
        healthy = True
        while True:
            state = self._state()
            if state != seen:
                notifier.status(self.status_line())
                seen = state
            if stop.wait(tick):
                return
            now_healthy = self.healthy()
            if now_healthy and watchdog is not None:
                notifier.watchdog()
            if now_healthy != healthy:
                log.log(
                    logging.INFO if now_healthy else logging.ERROR,
                    "%s",
                    "all components are making progress again"
                    if now_healthy
                    else f"not making progress: {', '.join(self.stalled())}; "
                    "the watchdog is not pinged (systemd restarts relay)",
                )
                healthy = now_healthy

    def stalled(self) -> list[str]:
        """Components whose thread died or is stuck in one step for too long."""
        return [c.name for c in self.components if not c.alive()]

    def healthy(self) -> bool:
        return not self.stalled()

    def _state(self) -> tuple[int, tuple[str | None, ...]]:
        """What STATUS= depends on, cheaply: the spool's version and the errors."""
        assert self.spool is not None
        errors = tuple(c.last_error for c in self.components)
        return self.spool.version, errors

    def status_line(self) -> str:
        """STATUS=: queue depth per sink, and the latest error anywhere."""
        assert self.spool is not None
        stats = self.spool.stats()
        errors = [
            (s.last_error_at or 0.0, f"{s.name}: {s.last_error}")
            for s in stats.sinks
            if s.last_error and s.attempts
        ]
        errors += [
            (time.time(), f"{c.name}: {error}")
            for c in self.components
            if (error := c.last_error) and not c.is_sink
        ]
        latest = max(errors)[1] if errors else None
        return status_text({s.name: s.depth for s in stats.sinks}, latest)

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


def _sleep(stop: threading.Event, notifier: Notifier, seconds: float) -> bool:
    """Sleep ``seconds``, pinging systemd's watchdog meanwhile; True if ``stop`` came."""
    tick = notifier.watchdog_interval()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(left, tick) if tick else left):
            return True
        if tick:
            notifier.watchdog()
    return stop.is_set()
