"""What the agent writes to its storage per event, over the last hour: an SD card's wear, for
a person deciding about SD cards (``relay status``, a metric).

Read from ``/proc/self/io``'s ``write_bytes``: what this process caused to be written to
storage (pages it dirtied, counted once each), which for relay is its spool. Sampled at most
once a minute, from commits that write the spool's figures anyway, so measuring costs no
write of its own.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

IO = Path("/proc/self/io")
WINDOW_S = 3600.0
EVERY_S = 60.0


def write_bytes() -> int | None:
    """This process's ``write_bytes`` so far; None where /proc/self/io is not (not Linux)."""
    try:
        for line in IO.read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class WearMeter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], int | None] = write_bytes,
    ) -> None:
        self._clock = clock
        self._read = read
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self._last = float("-inf")

    def due(self) -> bool:
        return self._clock() - self._last >= EVERY_S

    def sample(self, stored: int) -> tuple[int, int] | None:
        """Note ``stored`` (events stored so far); (bytes written per event, over how many
        seconds) since the oldest sample of the last hour, or None before there is one."""
        now, written = self._clock(), self._read()
        self._last = now
        if written is None:
            return None
        self._samples.append((now, written, stored))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()  # the oldest left is at most an hour old (and a minute)
        then, written_then, stored_then = self._samples[0]
        if stored <= stored_then:
            return None
        return round((written - written_then) / (stored - stored_then)), round(now - then)
