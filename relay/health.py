"""What a forwarder says about its sink's health, for a person reading the journal.

A far end that fails one request in five, all day, must not write two lines per failure
(thousands an hour, on the SD card that holds the journal). So:

- one WARNING when the sink starts failing, and again when an outage starts after the end
  of the last one was said;
- one INFO when it delivers again after an outage (a run of failed requests lasting
  ``OUTAGE_S`` or more from the start of the first, so one that hung until its timeout
  counts), with how long and how many requests failed: the end of an outage is news;
- while it flaps (fails now and then among successes), a summary at most every
  ``SUMMARY_S``: how many requests failed, of how many, and the last error;
- one INFO when it is healthy again, nothing having failed for ``SETTLE_S``: how long the
  trouble lasted and how many requests failed (unless the outage's end said it all).

Driven by the forwarder's thread: no timer, so a line that is due when the sink next sends
waits for that send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("relay.forwarder")

OUTAGE_S = 3.0  # failing this long without a success is an outage, not a blip
SETTLE_S = 60.0  # nothing failed for this long: healthy again
SUMMARY_S = 60.0  # at most one summary line this often while it flaps


class SinkHealth:
    """Not thread-safe: the forwarder's thread calls it."""

    def __init__(self, sink: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._extra = {"SINK": sink}
        self._clock = clock
        self.trouble_since: float | None = None  # None: healthy
        self._streak_since: float | None = None  # failing since, with no success in between
        self._requests = self._failed = 0  # in this trouble
        self._back_at: int | None = None  # failures when "delivering again" was said
        self._last_failure = self._last_summary = 0.0

    def failed(self, error: str, delay: float, *, sent_at: float | None = None) -> None:
        """A request failed; ``sent_at``: when it was sent (monotonic; default: now)."""
        now = self._clock()
        self._requests, self._failed, self._last_failure = (
            self._requests + 1,
            self._failed + 1,
            now,
        )
        if self._streak_since is None:
            self._streak_since = now if sent_at is None else sent_at
        outage = self._back_at is not None and now - self._streak_since >= OUTAGE_S
        if self.trouble_since is None or outage:
            if self.trouble_since is None:
                self.trouble_since = self._last_summary = now
            self._back_at = None
            log.warning(
                "sink %s: %s; retrying in %.1fs", self._sink, error, delay, extra=self._extra
            )
            return
        if now - self._last_summary >= SUMMARY_S:
            self._last_summary = now
            log.warning(
                "sink %s: %s for %.0fs: %d of %d requests failed; last: %s",
                self._sink,
                "failing now and then" if self._requests > self._failed else "still failing",
                now - self.trouble_since,
                self._failed,
                self._requests,
                error,
                extra=self._extra,
            )

    def ok(self) -> None:
        if self.trouble_since is None:
            return
        now = self._clock()
        self._requests += 1
        streak, self._streak_since = self._streak_since, None
        if streak is not None and now - streak >= OUTAGE_S:
            log.info(
                "sink %s: delivering again (failing for %.0fs, %d requests failed)",
                self._sink,
                now - streak,
                self._failed,
                extra=self._extra,
            )
            self._back_at = self._failed
        if now - self._last_failure < SETTLE_S:
            return
        if self._back_at is None or self._failed > self._back_at:
            log.info(
                "sink %s: healthy again after %.0fs of trouble: %d of %d requests failed",
                self._sink,
                self._last_failure - self.trouble_since,
                self._failed,
                self._requests,
                extra=self._extra,
            )
        self.trouble_since = None
        self._requests = self._failed = 0
