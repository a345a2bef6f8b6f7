"""relay/logonce.py: a flapping failure is one line when it starts and one when it is over."""

from __future__ import annotations

from relay.logonce import LogOnce


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flapping_failure_is_reported_once_and_over_once() -> None:
    clock = Clock()
    outage = LogOnce(settle_s=30, clock=clock)
    assert not outage.succeeded()  # nothing to end
    assert outage.failed("disk full")
    for _ in range(50):  # a commit fails, the next one fits, again and again
        clock.now += 0.1
        assert not outage.succeeded()
        assert not outage.failed("disk full")
    clock.now += 29.9
    assert not outage.succeeded()  # 29.9 s without a failure: not over yet
    clock.now += 0.2
    assert outage.succeeded()
    assert outage.reason is None
    assert not outage.succeeded()  # over once
    assert outage.failed("disk full")  # a new outage is news again


def test_another_reason_is_news() -> None:
    outage = LogOnce(settle_s=30, clock=Clock())
    assert outage.failed("disk full")
    assert outage.failed("read-only file system")
    assert outage.reason == "read-only file system"
