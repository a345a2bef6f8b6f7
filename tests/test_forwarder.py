"""The forwarder's step(now), driven with a fake clock and a MockSink: no sleeps."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from relay.backoff import Backoff
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.forwarder import Forwarder, Policy, Step
from relay.spool import Spool
from relay.spool.writer import Pace
from tests.helpers.mocks import MockSink, in_turn, payloads
from tests.helpers.wait import wait_until


class Wall:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path, durability="memory") as s:
        s.register_sinks(["fake"])
        yield s


def put(spool: Spool, *ns: int) -> None:
    spool.put_many([Event.new(node="t", source="test", name="x", payload=n) for n in ns])


def make(spool: Spool, sink: MockSink, **policy: object) -> Forwarder:
    pol = Policy(**{"backoff": Backoff(1.0, 2.0, 60.0), **policy})  # type: ignore[arg-type]
    return Forwarder(sink, spool, pol, rng=random.Random(0), wall=Wall())


def drain(f: Forwarder, now: float = 0.0, limit: int = 1000) -> list[Step]:
    """Step until idle, jumping the fake clock to each scheduled retry."""
    steps = []
    for _ in range(limit):
        step = f.step(now)
        steps.append(step)
        if step is Step.IDLE:
            return steps
        if step in (Step.RETRY, Step.WAIT):
            now = f.next_attempt
    raise AssertionError("did not go idle")


def test_idle_when_empty(spool: Spool) -> None:
    assert make(spool, MockSink()).step(0) is Step.IDLE


def test_sends_in_order_and_acks(spool: Spool) -> None:
    put(spool, 1, 2, 3)
    sink = MockSink()
    f = make(spool, sink)
    assert drain(f) == [Step.SENT] * 3 + [Step.IDLE]
    assert sink.batches == [[1], [2], [3]]
    spool.sync()  # acks are not waited for: let them commit before reading the counters
    assert spool.stats().sinks[0].delivered == 3


def test_transient_failure_retries_the_same_head_after_backoff(spool: Spool) -> None:
    put(spool, 1, 2)
    sink = MockSink(in_turn(TransientError("HTTP 503"), TransientError("HTTP 503"), None, None))
    f = make(spool, sink)
    assert f.step(0) is Step.RETRY
    first_wait = f.next_attempt
    assert 0 <= first_wait <= 1.0  # attempt 1: up to `initial`
    assert f.step(first_wait - 0.001) is Step.WAIT  # not due: nothing sent
    assert len(sink.batches) == 1
    assert f.step(first_wait) is Step.RETRY
    assert f.next_attempt - first_wait <= 2.0  # attempt 2: up to initial * factor
    assert drain(f, f.next_attempt) == [Step.SENT, Step.SENT, Step.IDLE]
    assert sink.batches == [[1], [1], [1], [2]]
    spool.sync()
    assert spool.stats().sinks[0].attempts == 0


def test_transient_retries_forever_without_max_age(spool: Spool) -> None:
    put(spool, 1)
    sink = MockSink(lambda events: TransientError("down"))
    f = make(spool, sink)
    now = 0.0
    for _ in range(200):
        assert f.step(now) is Step.RETRY
        assert f.next_attempt - now <= 60.0  # capped
        now = f.next_attempt
    assert spool.dead_letters() == []


def test_retry_after_is_honoured(spool: Spool) -> None:
    put(spool, 1)
    sink = MockSink(lambda events: TransientError("HTTP 429", retry_after=7.0))
    f = make(spool, sink)
    f.step(100.0)
    assert f.next_attempt >= 107.0


def test_poison_event_is_dead_lettered_and_the_rest_flow(spool: Spool) -> None:
    put(spool, 1, 2, 3)
    sink = MockSink(
        lambda events: PermanentError("HTTP 400: bad field") if payloads(events) == [2] else None
    )
    f = make(spool, sink, max_retries=2)
    steps = drain(f)
    assert steps.count(Step.RETRY) == 2 and steps.count(Step.DEAD) == 1
    assert sink.batches == [[1], [2], [2], [2], [3]]
    [dl] = spool.dead_letters()
    assert dl.reason == "HTTP 400: bad field (refused 3 times)" and dl.attempts == 3


def test_a_refused_event_is_retried_within_retry_initial_not_an_outages_waits(
    spool: Spool,
) -> None:
    """A refusal says the far end is up: its retries do not grow into an outage's backoff
    (every event behind it waits for them). 5 retries with an outage's backoff (1 s, 2 s,
    4 s, 8 s ceilings) could take 15 s; these take at most 4 x retry_initial."""
    put(spool, 1, 2)
    sink = MockSink(lambda events: PermanentError("HTTP 400") if payloads(events) == [1] else None)
    f = make(spool, sink, max_retries=5, backoff=Backoff(1.0, 2.0, 60.0, at_once=True))
    now, waits = 0.0, []
    while (step := f.step(now)) is Step.RETRY:
        waits.append(f.next_attempt - now)
        now = f.next_attempt
    assert step is Step.DEAD
    assert len(waits) == 5 and waits[0] < 0.01  # the first goes at once
    assert all(0.0 <= w <= 1.0 for w in waits), waits  # retry_initial: 1 s here


def test_max_retries_zero_dead_letters_at_once(spool: Spool) -> None:
    put(spool, 1)
    sink = MockSink(lambda events: PermanentError("HTTP 422"))
    assert drain(make(spool, sink, max_retries=0)) == [Step.DEAD, Step.IDLE]


def test_max_age_stops_transient_retries(spool: Spool) -> None:
    put(spool, 1, 2)
    sink = MockSink(lambda events: TransientError("HTTP 503") if payloads(events) == [1] else None)
    f = make(spool, sink, max_age=3600.0)
    wall = f._wall
    assert isinstance(wall, Wall)
    wall.t = spool.lease("fake").records[0].spooled_at + 10
    assert f.step(0) is Step.RETRY
    wall.t += 3600
    assert f.step(f.next_attempt) is Step.DEAD
    assert "max_age" in spool.dead_letters()[0].reason
    assert f.step(f.next_attempt) is Step.SENT


def test_batches_with_a_backlog(spool: Spool) -> None:
    put(spool, *range(7))
    sink = MockSink()
    assert drain(make(spool, sink, batch_max=3)) == [Step.SENT] * 3 + [Step.IDLE]
    assert sink.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_refused_batch_is_split_to_find_the_poison(spool: Spool) -> None:
    put(spool, *range(6))
    sink = MockSink(lambda events: PermanentError("HTTP 400") if 2 in payloads(events) else None)
    f = make(spool, sink, batch_max=4, max_retries=1)
    drain(f)
    assert [d.event_id for d in spool.dead_letters()] == [spool.dead_letters()[0].event_id]
    assert Event.from_json(spool.dead_letters()[0].body).payload == 2
    delivered = [n for b in sink.batches if 2 not in b for n in b]
    assert delivered == [0, 1, 3, 4, 5]
    assert sink.batches[0] == [0, 1, 2, 3]  # then by halves to 2, then batches again
    assert sink.batches[-1] == [3, 4, 5]


def test_partial_delivery_acks_the_front(spool: Spool) -> None:
    put(spool, *range(5))
    sink = MockSink(in_turn(TransientError("confirm lost", delivered=2), None))
    drain(make(spool, sink, batch_max=5))
    assert sink.batches == [[0, 1, 2, 3, 4], [2, 3, 4]]


def test_failure_state_is_kept_in_the_spool_for_status(spool: Spool) -> None:
    put(spool, 1)
    sink = MockSink(lambda events: TransientError("HTTP 503 from remote"))
    f = make(spool, sink)
    f.step(0)
    f.step(f.next_attempt)
    [stats] = spool.stats().sinks
    assert (stats.attempts, stats.last_error) == (2, "HTTP 503 from remote")


def test_run_wakes_on_put_and_stops(spool: Spool) -> None:
    done = threading.Event()
    sink = MockSink(lambda events: done.set())  # type: ignore[func-returns-value]
    f = make(spool, sink)
    steps: list[Step] = []
    real_step = f.step
    f.step = lambda now: steps.append(real_step(now)) or steps[-1]  # type: ignore[method-assign]
    f.start()
    try:
        put(spool, 1)
        assert done.wait(5)
    finally:
        f.stop()
    assert sink.closed
    # Woken once by the put: no steps on a timer while idle.
    assert steps.count(Step.IDLE) <= 3, steps


def test_the_queue_shows_empty_at_once_after_a_drain(tmp_path: Path) -> None:
    """Acks gather in the spool (up to its ack_delay) to share commits, draining or at a
    trickle; meanwhile this process's statistics read them from memory, so the queue shows
    empty at once (metrics, Home Assistant, STATUS=), not a delay later."""
    # A gathered ack would sit for a minute.
    with Spool.open(tmp_path, durability="normal", pace=Pace(ack_delay=60)) as spool:
        spool.register_sinks(["fake"])
        sink = MockSink()
        f = make(spool, sink)
        put(spool, 1, 2, 3)
        assert drain(f) == [Step.SENT, Step.SENT, Step.SENT, Step.IDLE]
        wait_until(lambda: spool.stats().sinks[0].depth == 0, 10, "the acks committed")


@pytest.mark.parametrize("bad", [0, 50, 99])
def test_a_refused_event_is_found_by_halves(spool: Spool, bad: int) -> None:
    """One event refused in a batch of 100: about log2(100) more requests to find it, its
    own max_retries, and batching again after it; the other 99 delivered in order."""
    put(spool, *range(100))
    sink = MockSink(lambda e: PermanentError("HTTP 400: bad event") if bad in payloads(e) else None)
    max_retries = 5
    drain(make(spool, sink, batch_max=100, max_retries=max_retries))
    assert len(sink.batches) <= 2 * math.log2(100) + max_retries + 1, sink.batches
    delivered = [n for b in sink.batches if bad not in b for n in b]
    assert delivered == [n for n in range(100) if n != bad]
    assert sink.batches.count([bad]) == max_retries + 1  # it alone, max_retries times more
    [dl] = spool.dead_letters()
    assert Event.from_json(dl.body).payload == bad
    assert dl.reason == f"HTTP 400: bad event (refused {max_retries + 1} times)"


def test_two_refused_events_in_one_batch(spool: Spool) -> None:
    put(spool, *range(40))
    sink = MockSink(lambda e: PermanentError("HTTP 400") if {7, 30} & set(payloads(e)) else None)
    drain(make(spool, sink, batch_max=40, max_retries=0))
    delivered = [n for b in sink.batches if not {7, 30} & set(b) for n in b]
    assert delivered == [n for n in range(40) if n not in (7, 30)]
    assert sorted(Event.from_json(d.body).payload for d in spool.dead_letters()) == [7, 30]
    assert len(sink.batches) <= 2 * (2 * math.log2(40) + 1)


def test_a_transient_failure_retries_the_half_whole(spool: Spool) -> None:
    """While halving, a 503 is a retry of the same request, not a clue."""
    put(spool, *range(8))
    answers = iter([PermanentError("HTTP 400"), TransientError("HTTP 503")])
    sink = MockSink(lambda e: next(answers, None) if 5 in payloads(e) or len(e) == 4 else None)
    drain(make(spool, sink, batch_max=8, max_retries=0))
    assert sink.batches[:3] == [list(range(8)), [0, 1, 2, 3], [0, 1, 2, 3]]


def test_an_exact_sink_names_the_refused_event(spool: Spool) -> None:
    """AMQP and Redis hear of each event: the one refused is known, nothing is halved."""
    put(spool, *range(6))

    def refuse_2(events: Sequence[Event]) -> PermanentError | None:
        b = payloads(events)
        return PermanentError("returned", delivered=b.index(2), exact=True) if 2 in b else None

    sink = MockSink(refuse_2)
    drain(make(spool, sink, batch_max=6, max_retries=1))
    assert sink.batches == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5], [3, 4, 5]]
    assert [Event.from_json(d.body).payload for d in spool.dead_letters()] == [2]
