"""Backoff with full jitter, a cap, and Retry-After (seconds and HTTP-date). Pure."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from relay.backoff import Backoff, parse_retry_after


def test_ceiling_doubles_then_caps() -> None:
    b = Backoff(initial=0.5, factor=2, cap=300)
    assert [b.ceiling(n) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 4]
    assert b.ceiling(10) == 256
    assert b.ceiling(11) == 300
    assert b.ceiling(10_000) == 300  # no overflow


def test_full_jitter_stays_under_the_ceiling_and_spreads() -> None:
    b, rng = Backoff(), random.Random(7)
    delays = [b.delay(5, rng) for _ in range(2000)]
    assert all(0 <= d <= b.ceiling(5) for d in delays)
    assert min(delays) < 0.1 * b.ceiling(5) and max(delays) > 0.9 * b.ceiling(5)


def test_seeded_rng_is_repeatable() -> None:
    b = Backoff()
    assert [b.delay(n, random.Random(1)) for n in range(1, 6)] == [
        b.delay(n, random.Random(1)) for n in range(1, 6)
    ]


def test_retry_after_is_a_floor_and_is_capped() -> None:
    b, rng = Backoff(initial=0.5, cap=60), random.Random(3)
    assert all(b.delay(1, rng, retry_after=2) >= 2 for _ in range(100))
    assert b.delay(1, rng, retry_after=86400) == 60
    assert b.delay(1, rng, retry_after=-5) <= 0.5


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-3", None),
    ],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_000_000.0) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", now) is None  # no zone: not HTTP


def test_at_once_retries_first_then_backs_off() -> None:
    b, rng = Backoff(initial=0.1, factor=2, cap=30, at_once=True), random.Random(5)
    assert [b.ceiling(n) for n in (1, 2, 3, 4)] == [0.0, 0.1, 0.2, 0.4]
    assert b.delay(1, rng) == 0.0
    assert b.delay(1, rng, retry_after=1) == 1  # the far end's word still counts
    assert 0 <= b.delay(2, rng) <= 0.1
