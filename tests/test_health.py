"""relay.health on a fake clock: a sink's trouble is a handful of lines, however it fails."""

from __future__ import annotations

import logging
import random

import pytest

from relay.health import SETTLE_S, SinkHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="relay.forwarder")
    return caplog


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_an_outage_is_two_lines(lines: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = SinkHealth("cloud", clock)
    for _ in range(31):  # down for a minute, a retry every 2 s
        health.failed("HTTP 503", 2.0)
        clock.now += 2
    health.ok()
    for _ in range(100):
        clock.now += 1
        health.ok()
    [start, summary, back] = said(lines)
    assert start == "sink cloud: HTTP 503; retrying in 2.0s"
    assert summary.startswith("sink cloud: still failing for 60s: 31 of 31 requests failed")
    assert back == "sink cloud: delivering again (failing for 62s, 31 requests failed)"


def test_flapping_is_a_line_a_minute(lines: pytest.LogCaptureFixture) -> None:
    """A far end failing one request in five, for an hour, at 10 requests a second."""
    clock, rng = Clock(), random.Random(1)
    health = SinkHealth("cloud", clock)
    for _ in range(36_000):
        clock.now += 0.1
        if rng.random() < 0.2:
            health.failed("HTTP 500", 0.0, sent_at=clock.now - 0.01)
        else:
            health.ok()
    assert 55 <= len(said(lines)) <= 62, said(lines)[:5]
    assert all("failing now and then" in line for line in said(lines)[1:])
    clock.now += SETTLE_S
    health.ok()
    assert said(lines)[-1].startswith("sink cloud: healthy again after 3600s of trouble")


def test_a_request_that_hung_until_its_timeout_is_an_outage(
    lines: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = SinkHealth("cloud", clock)
    clock.now += 3
    health.failed("no complete answer within 3s", 0.0, sent_at=clock.now - 3)
    health.ok()  # the retry goes through at once
    assert said(lines)[-1].startswith("sink cloud: delivering again (failing for 3s")
    clock.now += 10
    health.failed("no complete answer within 3s", 0.0, sent_at=clock.now - 3)
    assert said(lines)[-1].startswith("sink cloud: no complete answer")  # a new outage


def test_a_blip_is_one_line_and_its_end_one(lines: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = SinkHealth("cloud", clock)
    health.failed("HTTP 502", 0.0)
    for _ in range(70):
        clock.now += 1
        health.ok()
    assert said(lines) == [
        "sink cloud: HTTP 502; retrying in 0.0s",
        "sink cloud: healthy again after 0s of trouble: 1 of 61 requests failed",
    ]
