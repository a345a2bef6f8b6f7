"""Retry delays: exponential backoff with full jitter, a cap, and ``Retry-After``. Pure.

Full jitter (a delay drawn uniformly from zero up to the exponential ceiling) spreads the
retries of many relays that lost the same service at the same moment, so that they do not
come back in lock-step when it recovers. With ``at_once``, the first retry goes without
waiting: a service that fails one request in five, but is up, then costs one more request
now and then instead of a wait each time; the backoff starts from the second failure in a
row, which is where an outage shows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    cap: float = 300.0
    at_once: bool = False  # the first retry does not wait (Retry-After still counts)

    def ceiling(self, attempt: int) -> float:
        """The most the ``attempt``-th retry (1, 2, ...) may wait."""
        if self.at_once:
            if attempt <= 1:
                return 0.0
            attempt -= 1
        exponent = min(max(attempt - 1, 0), 64)  # beyond this the cap has long won
        return min(self.cap, self.initial * self.factor**exponent)

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before the ``attempt``-th retry.

        A ``Retry-After`` from the far end is a floor (capped, so a server cannot park us
        for a day); the jittered delay is used when it is longer.
        """
        jittered = rng.uniform(0.0, self.ceiling(attempt))
        if retry_after is None:
            return jittered
        return max(jittered, min(max(retry_after, 0.0), self.cap))

    def refused(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before retrying an event the far end refused ``failures`` times
        in a row: a refusal says it is up, so this does not grow as an outage's delay does.
        The first retry goes at once (with ``at_once``); each is within ``initial``."""
        return self.delay(min(failures, 2 if self.at_once else 1), rng)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date.

    ``now`` is the wall-clock time (the HTTP-date form is absolute). Returns None for a
    missing or unparsable value; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a date without a zone is not one
    return max(when.timestamp() - now, 0.0)
