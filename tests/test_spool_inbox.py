"""The writer's inbox (relay/spool/inbox.py): order, the bound, and no lost wake-up."""

from __future__ import annotations

import threading

from relay.spool.inbox import Inbox


def test_take_returns_what_was_put_in_order_up_to_most() -> None:
    inbox: Inbox[int] = Inbox(100)
    for n in range(10):
        inbox.put(n)
    assert inbox.take(4) == [0, 1, 2, 3]
    assert inbox.take(100) == [4, 5, 6, 7, 8, 9]


def test_take_waits_for_a_put_from_another_thread() -> None:
    inbox: Inbox[str] = Inbox(10)
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(inbox.take(10)))
    taker.start()
    taker.join(0.1)
    assert taker.is_alive(), "take() returned with nothing put"
    inbox.put("x")
    taker.join(5)
    assert got == [["x"]]


def test_put_blocks_while_full_until_a_take() -> None:
    inbox: Inbox[int] = Inbox(2)
    inbox.put(1)
    inbox.put(2)
    putter = threading.Thread(target=inbox.put, args=(3,))
    putter.start()
    putter.join(0.1)
    assert putter.is_alive(), "put() did not wait on a full inbox"
    assert inbox.take(1) == [1]
    putter.join(5)
    assert not putter.is_alive()
    assert inbox.take(10) == [2, 3]


def test_many_producers_one_taker_lose_nothing() -> None:
    inbox: Inbox[tuple[int, int]] = Inbox(8)  # small: producers keep hitting the bound
    producers, each = 16, 2000

    def produce(p: int) -> None:
        for n in range(each):
            inbox.put((p, n))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    got: list[tuple[int, int]] = []
    while len(got) < producers * each:
        batch = inbox.take(5)
        assert 1 <= len(batch) <= 5
        got.extend(batch)
    for t in threads:
        t.join(5)
    for p in range(producers):  # each producer's items arrive once, in its order
        assert [n for q, n in got if q == p] == list(range(each))


def test_take_with_a_timeout_returns_nothing_when_nothing_came() -> None:
    inbox: Inbox[int] = Inbox(10)
    assert inbox.take(10, timeout=0.05) == []
    inbox.put(7)
    assert inbox.take(10, timeout=0.05) == [7]
    later = threading.Timer(0.05, inbox.put, args=(8,))
    later.start()
    assert inbox.take(10, timeout=30) == [8]  # woken by the put, long before the timeout
    later.join()
