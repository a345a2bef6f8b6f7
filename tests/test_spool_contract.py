"""The spool's contract, run against every durability mode (huey's storage-test pattern)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from relay.errors import SpoolClosed, SpoolError, SpoolFull
from relay.event import Event
from relay.spool import ROW_OVERHEAD, Chain, Durability, Spool

MODES = ["full", "normal", "memory"]


def ev(n: int, size: int = 0) -> Event:
    return Event.new(node="t", source="test", name=f"e{n}", payload={"n": n, "pad": "x" * size})


def ns(lease: object) -> list[int]:
    return [r.event.payload["n"] for r in lease.records]  # type: ignore[attr-defined]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> Durability:
    return cast(Durability, request.param)


@pytest.fixture
def spool(tmp_path: Path, mode: Durability) -> Iterator[Spool]:
    s = Spool.open(tmp_path, durability=mode)
    s.register_sinks(["a", "b"])
    yield s
    s.close()


def test_put_then_lease_in_order(spool: Spool) -> None:
    spool.put_many([ev(i) for i in range(5)])
    spool.put(ev(5))
    assert ns(spool.lease("a", 10)) == [0, 1, 2, 3, 4, 5]
    assert ns(spool.lease("a", 2)) == [0, 1]
    assert spool.lease("a", 0).records == []


def test_lease_does_not_remove(spool: Spool) -> None:
    spool.put(ev(0))
    assert ns(spool.lease("a")) == [0]
    assert ns(spool.lease("a")) == [0]


def test_ack_moves_only_that_sinks_cursor(spool: Spool) -> None:
    spool.put_many([ev(i) for i in range(3)])
    head = spool.lease("a", 2).records
    spool.ack("a", head[-1].seq)
    assert ns(spool.lease("a", 10)) == [2]
    assert ns(spool.lease("b", 10)) == [0, 1, 2]


def test_ack_is_idempotent_and_never_goes_back(spool: Spool) -> None:
    spool.put_many([ev(i) for i in range(3)])
    records = spool.lease("a", 3).records
    spool.ack("a", records[1].seq)
    spool.ack("a", records[0].seq)
    spool.ack("a", records[1].seq)
    assert ns(spool.lease("a", 10)) == [2]


def test_retry_counts_attempts_on_the_head(spool: Spool) -> None:
    spool.put_many([ev(0), ev(1)])
    head = spool.lease("a").records[0]
    assert spool.retry("a", head.seq, "503", permanent=False) == (1, 0)
    assert spool.retry("a", head.seq, "400", permanent=True) == (2, 1)
    lease = spool.lease("a")
    assert (lease.attempts, lease.failures) == (2, 1)
    assert spool.lease("b").attempts == 0
    spool.ack("a", head.seq)
    lease = spool.lease("a")
    assert ns(lease) == [1]
    assert (lease.attempts, lease.failures) == (0, 0)


def test_dead_letter_keeps_reason_and_unblocks(spool: Spool) -> None:
    spool.put_many([ev(0), ev(1)])
    head = spool.lease("a").records[0]
    spool.retry("a", head.seq, "HTTP 400", permanent=True)
    spool.dead_letter("a", head.seq, "HTTP 400: bad field")
    assert ns(spool.lease("a")) == [1]
    assert ns(spool.lease("b")) == [0]
    [dl] = spool.dead_letters()
    assert (dl.sink, dl.event_id, dl.attempts) == ("a", head.event.id, 1)
    assert dl.reason == "HTTP 400: bad field"
    assert Event.from_json(dl.body) == head.event
    stats = {s.name: s for s in spool.stats().sinks}
    assert stats["a"].dead_letters == 1
    assert stats["a"].last_error == "HTTP 400: bad field"


def test_redeliver_goes_to_that_sink_only_with_the_same_id(spool: Spool) -> None:
    spool.put_many([ev(0), ev(1)])
    first = spool.lease("a").records[0]
    spool.dead_letter("a", first.seq, "poison")
    spool.ack("b", spool.lease("b", 2).records[-1].seq)
    assert spool.redeliver("a") == 1
    assert spool.dead_letters() == []
    assert ns(spool.lease("a", 5)) == [1, 0]  # the replay goes to the back of the line
    assert spool.lease("a", 5).records[1].event.id == first.event.id
    assert spool.lease("b", 5).records == []


def test_redeliver_and_purge_by_id_and_sink(spool: Spool) -> None:
    spool.put_many([ev(i) for i in range(3)])
    records = spool.lease("a", 3).records
    for r in records:
        spool.dead_letter("a", r.seq, "x")
    spool.dead_letter("b", spool.lease("b").records[0].seq, "y")
    assert spool.redeliver("a", [records[1].event.id]) == 1
    assert spool.purge("a", [records[0].event.id, "nope"]) == 1
    assert [d.event_id for d in spool.dead_letters("a")] == [records[2].event.id]
    assert spool.purge("b") == 1
    assert len(spool.dead_letters()) == 1


def test_new_sink_starts_from_new_events(spool: Spool) -> None:
    spool.put(ev(0))
    spool.register_sinks(["a", "b", "c"])
    assert spool.lease("c").records == []
    spool.put(ev(1))
    assert ns(spool.lease("c", 5)) == [1]
    assert ns(spool.lease("a", 5)) == [0, 1]


def test_first_sinks_take_what_was_queued_before(tmp_path: Path, mode: Durability) -> None:
    with Spool.open(tmp_path, durability=mode) as s:
        s.put(ev(0))  # relay push before the agent ever ran
        s.register_sinks(["a"])
        assert ns(s.lease("a")) == [0]


def test_removed_sink_is_forgotten(spool: Spool) -> None:
    spool.put(ev(0))
    spool.ack("a", spool.lease("a").records[0].seq)
    spool.register_sinks(["a"])
    with pytest.raises(SpoolError, match="unknown sink"):
        spool.lease("b")
    assert spool.stats().rows == 0  # b no longer holds the row back


def test_delivered_rows_are_deleted(spool: Spool) -> None:
    for i in range(2000):
        spool.put(ev(i))
    for sink in ("a", "b"):
        while records := spool.lease(sink, 300).records:
            spool.ack(sink, records[-1].seq)
    spool.sync()  # the acks' commit
    stats = spool.stats()
    assert stats.rows == 0
    assert stats.bytes == 0
    assert [s.delivered for s in stats.sinks] == [2000, 2000]


def test_reject_when_full(tmp_path: Path, mode: Durability) -> None:
    one = len(ev(0, 100).to_json()) + ROW_OVERHEAD
    with Spool.open(tmp_path, durability=mode, max_bytes=3 * one + 10) as s:
        s.register_sinks(["a"])
        for i in range(3):
            s.put(ev(i, 100))
        with pytest.raises(SpoolFull, match="spool full"):
            s.put(ev(3, 100))
        s.ack("a", s.lease("a").records[0].seq)
        s.put(ev(4, 100))  # the delivered row made room
        assert ns(s.lease("a", 5)) == [1, 2, 4]


def test_rejected_put_does_not_fail_its_commit_neighbours(tmp_path: Path, mode: Durability) -> None:
    one = len(ev(0, 100).to_json()) + ROW_OVERHEAD
    with Spool.open(tmp_path, durability=mode, max_bytes=2 * one + 10) as s:
        s.register_sinks(["a"])
        results: list[object] = []
        done = threading.Semaphore(0)

        def record(err: object) -> None:
            results.append(err)
            done.release()

        for i in range(3):
            s.put_async([ev(i, 100)], record)
        for _ in range(3):
            done.acquire()
        assert results[:2] == [None, None]
        assert isinstance(results[2], SpoolFull)
        assert ns(s.lease("a", 5)) == [0, 1]


def test_a_chain_stores_nothing_after_its_first_refusal(tmp_path: Path, mode: Durability) -> None:
    """Without a chain a small event fits after a refused large one and is stored ahead of
    it; on a chain it is refused too, so that a producer sending both again keeps order."""
    one = len(ev(0, 100).to_json()) + ROW_OVERHEAD
    with Spool.open(tmp_path, durability=mode, max_bytes=2 * one + 10) as s:
        s.register_sinks(["a"])
        for chain in (None, Chain()):
            results = _put_async_all(s, [ev(0, 100), ev(1, 400), ev(2, 0)], chain)
            stored = ns(s.lease("a", 5))
            if chain is None:
                assert results[0] is None and isinstance(results[1], SpoolFull)
                assert results[2] is None and stored == [0, 2]  # 2 got in ahead of 1
                s.ack("a", s.lease("a", 5).records[-1].seq)
            else:
                assert results[0] is None and isinstance(results[1], SpoolFull)
                assert isinstance(results[2], SpoolError) and stored == [0]
                assert chain.broken is results[1]


def _put_async_all(s: Spool, events: list[Event], chain: Chain | None) -> list[object]:
    """put_async each event in turn; their results once all are in."""
    results: list[object] = []
    done = threading.Semaphore(0)

    def record(err: object) -> None:
        results.append(err)
        done.release()

    for event in events:
        s.put_async([event], record, chain=chain)
    for _ in events:
        done.acquire()
    return results


def test_drop_oldest_drops_and_counts(tmp_path: Path, mode: Durability) -> None:
    one = len(ev(0, 100).to_json()) + ROW_OVERHEAD
    with Spool.open(
        tmp_path, durability=mode, max_bytes=3 * one + 10, when_full="drop_oldest"
    ) as s:
        s.register_sinks(["a"])
        for i in range(5):
            s.put(ev(i, 100))
        assert ns(s.lease("a", 10)) == [2, 3, 4]
        assert s.stats().dropped == 2
        assert s.stats().bytes <= s.max_bytes


def test_event_larger_than_the_cap_is_refused(tmp_path: Path, mode: Durability) -> None:
    s = Spool.open(tmp_path, durability=mode, max_bytes=1000, when_full="drop_oldest")
    with s, pytest.raises(SpoolFull):
        s.put(ev(0, 2000))


def test_put_async_reports_after_commit(spool: Spool) -> None:
    seen: list[object] = []
    done = threading.Event()

    def callback(err: object) -> None:
        # By now the event must be visible to a reader: the commit has returned.
        seen.append((err, ns(spool.lease("a"))))
        done.set()

    spool.put_async([ev(7)], callback)
    assert done.wait(5)
    assert seen == [(None, [7])]


def test_concurrent_producers_keep_each_ones_order(spool: Spool) -> None:
    def produce(t: int) -> None:
        for i in range(200):
            spool.put(Event.new(node="t", source="test", name="x", payload={"t": t, "i": i}))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = spool.lease("a", 5000).records
    assert len(records) == 1600
    for t in range(8):
        mine = [r.event.payload["i"] for r in records if r.event.payload["t"] == t]
        assert mine == list(range(200))


def test_version_changes_on_put_and_wakes_waiters(spool: Spool) -> None:
    v = spool.version
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(spool.wait_for_change(v, 10)))
    waiter.start()
    spool.put(ev(0))
    waiter.join(5)
    assert woke and woke[0] != v


def test_closed_spool_refuses(tmp_path: Path, mode: Durability) -> None:
    s = Spool.open(tmp_path, durability=mode)
    s.close()
    s.close()
    with pytest.raises(SpoolClosed):
        s.put(ev(0))
    with pytest.raises(SpoolClosed):
        s.lease("a")


def test_stats(spool: Spool) -> None:
    spool.put_many([ev(0), ev(1)])
    spool.retry("a", spool.lease("a").records[0].seq, "HTTP 503", permanent=False)
    a, b = spool.stats().sinks
    assert (a.name, a.depth, a.attempts, a.last_error) == ("a", 2, 1, "HTTP 503")
    assert a.oldest_at is not None
    assert (b.depth, b.attempts, b.last_error) == (2, 0, None)


# ------------------------------------------------------------------ across close and reopen


@pytest.mark.parametrize("durable", ["full", "normal"])
def test_everything_survives_reopen(tmp_path: Path, durable: Durability) -> None:
    with Spool.open(tmp_path, durability=durable) as s:
        s.register_sinks(["a", "b"])
        s.put_many([ev(i) for i in range(4)])
        records = s.lease("a", 4).records
        s.ack("a", records[0].seq)
        s.retry("a", records[1].seq, "boom", permanent=True)
        s.dead_letter("b", s.lease("b").records[0].seq, "poison")
    with Spool.open(tmp_path, durability=durable, check=True) as s:
        s.register_sinks(["a", "b"])
        lease = s.lease("a", 10)
        assert ns(lease) == [1, 2, 3]
        assert (lease.attempts, lease.failures) == (1, 1)
        assert ns(s.lease("b", 10)) == [1, 2, 3]
        assert [d.reason for d in s.dead_letters()] == ["poison"]
        assert s.stats().bytes > 0


def test_memory_mode_starts_empty_every_time(tmp_path: Path) -> None:
    with Spool.open(tmp_path, durability="memory") as s:
        s.register_sinks(["a"])
        s.put(ev(0))
    with Spool.open(tmp_path, durability="memory") as s:
        s.register_sinks(["a"])
        assert s.lease("a").records == []
    assert not (tmp_path / "spool.db").exists()


def test_seq_is_never_reused_after_everything_was_deleted(tmp_path: Path) -> None:
    with Spool.open(tmp_path) as s:
        s.register_sinks(["a"])
        s.put(ev(0))
        s.ack("a", s.lease("a").records[0].seq)
        s.sync()  # the ack's commit
        assert s.stats().rows == 0
    with Spool.open(tmp_path) as s:
        s.register_sinks(["a"])
        s.put(ev(1))
        assert ns(s.lease("a")) == [1]


def test_two_processes_share_the_file(tmp_path: Path) -> None:
    """relay push writes while the agent holds the spool open: both see each other's rows."""
    with Spool.open(tmp_path) as agent:
        agent.register_sinks(["a"])
        with Spool.open(tmp_path) as push:
            push.put(ev(0))
        agent.put(ev(1))
        assert ns(agent.lease("a", 5)) == [0, 1]
        assert agent.stats().bytes == sum(
            len(r.event.to_json()) + ROW_OVERHEAD for r in agent.lease("a", 5).records
        )


def test_the_writers_figures_follow_another_process(tmp_path: Path) -> None:
    """The writer keeps the byte count and the next seq from its last commit; a commit by
    another process (relay push) in between is seen (PRAGMA data_version): the cap counts
    its row and no seq is given twice."""
    one = len(ev(0).to_json()) + ROW_OVERHEAD
    with Spool.open(tmp_path, max_bytes=3 * one + 10) as agent:
        agent.register_sinks(["a"])
        agent.put(ev(0))
        with Spool.open(tmp_path, max_bytes=3 * one + 10) as push:
            push.put(ev(1))
        agent.put(ev(2))
        with pytest.raises(SpoolFull):
            agent.put(ev(3))
        assert ns(agent.lease("a", 5)) == [0, 1, 2]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Spool.open(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "spool.db")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(SpoolError, match="newer than this relay"):
        Spool.open(tmp_path)
