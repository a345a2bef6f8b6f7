"""The spool's writer on its own: group commit, one refused operation failing alone, a bug
failing its batch without hanging anyone, stop() answering everything queued before it, and
acks that nobody waits for gathered into one commit."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from relay.errors import SpoolClosed, SpoolError
from relay.event import Event
from relay.spool import file
from relay.spool.txn import Txn
from relay.spool.writer import ACK_DELAY_S, ACK_OPS, WINDOW_OPS, Pace, Writer
from tests.helpers.wait import wait_until


class Harness:
    def __init__(self, ack_delay: float = ACK_DELAY_S) -> None:
        self.conn = file.open_memory()
        self.lock = threading.Lock()
        self.committed: list[Txn] = []
        self.writer = Writer(
            self.conn, self.lock, self.txn, self.committed.append, pace=Pace(ack_delay=ack_delay)
        )

    def txn(self, c: sqlite3.Cursor) -> Txn:
        return Txn(c, max_bytes=10**9, when_full="reject", now=0.0)

    def rows(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.fixture
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(getattr(request, "param", ACK_DELAY_S))
    yield harness
    harness.writer.stop()
    harness.writer.join()


def ev(n: int) -> Event:
    return Event.new(node="t", source="test", name=f"e{n}", payload=n)


def refuse(t: Txn) -> None:
    raise SpoolError("refused")


def bug(t: Txn) -> None:
    raise KeyError("a bug")


def test_call_returns_after_the_commit(h: Harness) -> None:
    assert h.writer.call(lambda t: t.insert([ev(0)]) or 42) == 42
    assert h.rows() == 1
    assert len(h.committed) == 1


def test_a_refused_operation_fails_alone(h: Harness) -> None:
    replies: list[tuple[object, SpoolError | None]] = []
    with h.lock:  # the writer waits here, so what follows is queued (mostly) for one commit
        h.writer.submit(lambda t: t.insert([ev(0)]), lambda r, e: replies.append((r, e)))
        h.writer.submit(refuse, lambda r, e: replies.append((r, e)))
        h.writer.submit(lambda t: 7, lambda r, e: replies.append((r, e)))
    h.writer.call(lambda t: None)
    assert [r for r, _ in replies] == [None, None, 7]
    assert [str(e) if e else None for _, e in replies] == [None, "refused", None]
    assert h.rows() == 1


def test_a_bug_fails_its_batch_and_the_writer_goes_on(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relay.spool")
    with pytest.raises(SpoolError, match="spool writer failed: KeyError"):
        h.writer.call(bug)
    assert "spool writer failed" in caplog.text
    assert h.rows() == 0  # rolled back
    h.writer.call(lambda t: t.insert([ev(1)]))
    assert h.rows() == 1


def test_stop_answers_what_was_queued_and_refuses_the_rest(h: Harness) -> None:
    replies: list[SpoolError | None] = []
    with h.lock:
        h.writer.submit(lambda t: t.insert([ev(0)]), lambda _, e: replies.append(e))
        assert h.writer.stop() is True
        assert h.writer.stop() is False
        assert h.writer.closed
    h.writer.join()
    assert replies == [None]
    assert h.rows() == 1
    with pytest.raises(SpoolClosed):
        h.writer.call(lambda t: None)
    with pytest.raises(SpoolClosed):
        h.writer.submit(lambda t: None, lambda r, e: None)


@pytest.mark.parametrize("h", [0.5], indirect=True)
def test_acks_nobody_waits_for_gather_into_one_commit(h: Harness) -> None:
    """Acks (relaxed, no waiter: a draining forwarder's) submitted one at a time, as a
    forwarder drains, wait up to ack_delay for company: a handful of commits, not one
    each."""
    done = threading.Event()
    replies: list[int] = []

    def reply(result: object, error: SpoolError | None) -> None:
        replies.append(1)
        if len(replies) == 50:
            done.set()

    for _ in range(50):
        h.writer.ack(lambda t: None, reply)
        time.sleep(0.001)
    assert done.wait(10)
    assert len(h.committed) <= 5, f"{len(h.committed)} commits for 50 acks"


@pytest.mark.parametrize("h", [60], indirect=True)
def test_acks_of_a_fast_drain_commit_every_ack_ops(h: Harness) -> None:
    """Acks wait for their deadline (a minute here) only while fewer than ACK_OPS wait: a
    fast drain commits every ACK_OPS acks, so that a crash re-sends no more than those."""
    replies: list[int] = []
    for _ in range(ACK_OPS - 1):
        h.writer.ack(lambda t: None, lambda r, e: replies.append(1))
    time.sleep(0.5)
    assert replies == [] and h.committed == []  # they wait
    h.writer.ack(lambda t: None, lambda r, e: replies.append(1))
    wait_until(lambda: len(replies) == ACK_OPS, 5, "the acks committed")
    assert len(h.committed) == 1


@pytest.mark.parametrize("h", [60], indirect=True)  # a held write would hang the test
def test_anything_else_ends_the_wait(h: Harness) -> None:
    """A put behind a gathering ack is committed at once, and the ack with it; a relaxed
    write that someone waits for (sync) is never held either."""
    acked = threading.Event()
    h.writer.ack(lambda t: None, lambda r, e: acked.set())
    h.writer.call(lambda t: t.insert([ev(1)]))
    assert acked.is_set() and h.rows() == 1
    assert len(h.committed) == 1  # one commit for both
    for _ in range(3):
        h.writer.sync()
    assert len(h.committed) == 4


def windowed(interval: float) -> Harness:
    harness = Harness()
    harness.writer.stop()
    harness.writer.join()
    harness.writer = Writer(
        harness.conn,
        harness.lock,
        harness.txn,
        harness.committed.append,
        pace=Pace(commit_interval=interval),
    )
    return harness


def test_a_commit_window_puts_several_events_in_one_commit() -> None:
    """Puts answered by callback (MQTT's) wait up to commit_interval for company: a trickle
    of 10 a second makes a commit a second, not ten; each is answered after its commit."""
    h = windowed(1.0)
    try:
        answered: list[float] = []
        for n in range(5):
            h.writer.submit(
                lambda t, n=n: t.insert([ev(n)]),
                lambda r, e: answered.append(time.monotonic()),
                window=True,
            )
            time.sleep(0.1)
        wait_until(lambda: len(answered) == 5, 5, "five answers")
        assert len(h.committed) == 1 and h.rows() == 5
    finally:
        h.writer.stop()
        h.writer.join()


def test_a_commit_window_closes_early_for_the_broker_and_for_a_waiter() -> None:
    """16 waiting puts close it (the broker sends 20 unacknowledged at most), and so does a
    caller that waits (relay push through the agent's own spool)."""
    h = windowed(60.0)  # a window that never ran out would hang the test
    try:
        done = threading.Semaphore(0)
        with h.lock:  # everything below is queued before the writer looks
            for n in range(WINDOW_OPS):
                h.writer.submit(
                    lambda t, n=n: t.insert([ev(n)]), lambda r, e: done.release(), window=True
                )
        for _ in range(WINDOW_OPS):
            assert done.acquire(timeout=10)
        h.writer.submit(lambda t: t.insert([ev(99)]), lambda r, e: done.release(), window=True)
        h.writer.call(lambda t: t.insert([ev(100)]))  # a waiter: commits the held one too
        assert done.acquire(timeout=1)
        assert h.rows() == WINDOW_OPS + 2
    finally:
        h.writer.stop()
        h.writer.join()
