"""The thread of a steppable component: the one loop the forwarders and the command executor
run in.

A component does its work in ``advance(now)``, one step at a time, and says when the next
step is due: at once, after a delay (a retry), or when something changes (new work). The
runner calls it, sleeps in between through the component (which knows what to wait on), and
is the thread's top: a spool that refuses (a full or read-only disk) is logged once and
waited out with backoff; any other exception is a bug, logged with its traceback, counted
in the backoff, and the loop goes on. ``alive()`` tells the watchdog whether the thread runs
and no step has been under way for longer than ``stall_s``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from relay.backoff import Backoff
from relay.errors import SpoolError
from relay.logonce import LogOnce

log = logging.getLogger(__name__)


class Steppable(Protocol):
    """What a :class:`StepRunner` drives."""

    def version(self) -> int:
        """The change counter :meth:`sleep` waits on; read before each step, so that a
        change during the step is not missed."""

    def advance(self, now: float) -> float | None:
        """One step (``now``: monotonic seconds). Seconds until the next step is due (0: at
        once), or None: when something changes after the version read before it."""

    def sleep(self, version: int, timeout: float | None, stop: threading.Event) -> None:
        """Sleep for ``timeout`` seconds or, when ``timeout`` is None, until a change after
        ``version``; return early once ``stop`` is set (``wake`` makes that prompt)."""

    def wake(self) -> None:
        """End the current or next :meth:`sleep` (any thread; quick; never blocks)."""


class StepRunner:
    """Runs ``component`` in a thread named ``name``. ``what`` starts each log line (a
    sink's ``"sink cloud"``); ``extra``: journald fields for them."""

    def __init__(
        self,
        component: Steppable,
        *,
        name: str,
        what: str,
        backoff: Backoff,
        stall_s: float,
        daemon: bool = True,
        extra: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._component = component
        self._what = what
        self._backoff = backoff
        self._stall_s = stall_s
        self._extra = dict(extra or {})
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._busy_since: float | None = None  # monotonic start of the step under way
        self._thread = threading.Thread(target=self._run, name=name, daemon=daemon)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the step under way; False if the thread is still in it ``timeout``
        seconds later (wedged: left behind, if it is a daemon)."""
        self._stop.set()
        self._component.wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        """For the watchdog: the thread runs and is not stuck in one step."""
        busy_since = self._busy_since
        stuck = busy_since is not None and self._clock() - busy_since > self._stall_s
        return self._thread.is_alive() and not stuck

    def _run(self) -> None:
        errors = 0
        spool_failing = LogOnce()  # logged once, not once per try or per flap
        while not self._stop.is_set():
            version = self._component.version()  # before the step: no change is missed
            self._busy_since = self._clock()
            try:
                delay = self._component.advance(self._clock())
                errors = 0
                spool_failing.succeeded()
            except SpoolError as exc:  # the disk is full or read-only: no bug, no traceback
                errors += 1
                delay = self._backoff.delay(errors, self._rng)
                if spool_failing.failed(str(exc)):
                    log.error(
                        "%s: %s; trying again in %.1fs", self._what, exc, delay, extra=self._extra
                    )
            except Exception:  # the thread's top: log, count, back off, go on
                errors += 1
                delay = self._backoff.delay(errors, self._rng)
                log.exception(
                    "%s: unexpected error; retrying in %.1fs", self._what, delay, extra=self._extra
                )
            finally:
                self._busy_since = None
            if delay is None or delay > 0:
                self._component.sleep(version, delay, self._stop)
