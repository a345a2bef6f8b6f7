"""Log a failure once when it starts and once when it is over, however often it flaps.

A nearly full disk fails some commits and lets others through (a small one fits, a large one
does not; a checkpoint frees pages, the next batch takes them again). Logging "failed" and
"works again" at each flip wrote a dozen lines a second to the journal of the very disk that
was full. With :class:`LogOnce` a failure is news when it starts or its reason changes, and
it is over only once nothing has failed for ``settle_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

SETTLE_S = 30.0


class LogOnce:
    """Not thread-safe: each user calls it from one thread, or under its own lock."""

    def __init__(
        self, settle_s: float = SETTLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reason: str | None = None  # what was reported, while the failure lasts
        self._settle_s = settle_s
        self._clock = clock
        self._last_failure = -math.inf

    def failed(self, reason: str) -> bool:
        """A failure happened; True if it is news to log (no failure yet, or another
        reason than the one logged)."""
        self._last_failure = self._clock()
        if reason == self.reason:
            return False
        self.reason = reason
        return True

    def succeeded(self) -> bool:
        """It worked; True if that ends the failure: nothing failed for ``settle_s``."""
        if self.reason is None or self._clock() - self._last_failure < self._settle_s:
            return False
        self.reason = None
        return True
