"""The one polling helper of the tests: wait until a condition holds, or fail saying what for.

Tests poll what they cannot be told about (a row in a spool file another process writes, a
request at a local server, a broker's port); relay itself never polls. Use it for "wait
until X", never to let time pass: a check that nothing more arrived waits for a marker sent
after the rest (see tests/test_mqtt_source.py), not for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class WaitTimeout(AssertionError, TimeoutError):
    """The condition did not hold in time. An ``AssertionError`` (a test that waited in vain
    failed) and a ``TimeoutError`` (what the broker helpers catch to clean up and explain)."""


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> None:
    """Return once ``condition()`` is true, checked every ``interval`` seconds on the
    monotonic clock (the wall clock may be moved by the test); raise :class:`WaitTimeout`
    naming ``what`` after ``timeout`` seconds, with ``detail()`` (say, an agent's output)
    appended. ``condition`` may itself raise to end the wait early ("the process died")."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{more}")
        time.sleep(interval)
