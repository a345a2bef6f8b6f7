"""Spool benchmark: relay's spool against persist-queue's SQLiteAckQueue, in one run.

    .venv/bin/python tests/bench/spool_bench.py [--events 20000] [--backlog 1000000] [--json]

Prints one table (``--json``: the rows of tests/bench/run_all's table instead). Both sides
store the same ~150-byte events durably (relay: durability "full"; persist-queue: its
default, which commits every put and ack).
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from summary import Row, emit, row

from relay.event import Event
from relay.spool import Spool
from relay.spool.inbox import Inbox


def events(n: int) -> list[Event]:
    return [
        Event.new(
            node="bench", source="bench", name="home/hall/door", payload={"i": i, "s": "open"}
        )
        for i in range(n)
    ]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def relay_put(n: int, producers: int) -> float:
    batch = events(n)
    with tempfile.TemporaryDirectory() as d, Spool.open(Path(d), durability="full") as spool:
        spool.register_sinks(["a"])
        share = [batch[p::producers] for p in range(producers)]

        def produce(mine: list[Event]) -> None:
            for e in mine:
                spool.put(e)

        threads = [threading.Thread(target=produce, args=(m,)) for m in share]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n / (time.perf_counter() - start)


def relay_put_async(n: int, producers: int, window: int) -> float:
    """Producers that keep ``window`` puts in flight, acknowledged by callback after the
    commit: how the MQTT source uses the spool (Mosquitto allows 20 unacked per client)."""
    batch = events(n)
    with tempfile.TemporaryDirectory() as d, Spool.open(Path(d), durability="full") as spool:
        spool.register_sinks(["a"])
        share = [batch[p::producers] for p in range(producers)]

        def produce(mine: list[Event]) -> None:
            slots = threading.Semaphore(window)
            for e in mine:
                slots.acquire()
                spool.put_async([e], lambda err: slots.release())
            for _ in range(window):
                slots.acquire()

        threads = [threading.Thread(target=produce, args=(m,)) for m in share]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n / (time.perf_counter() - start)


def handoff_ceiling(n: int, producers: int, inbox: bool) -> float:
    """No spool at all: only the thread hand-off a blocking put needs (a queue to a worker
    thread and a lock it releases). CPython's bound on any blocking put from threads: with
    ``queue.Queue``, or with relay's ``Inbox`` (the worker takes all that waits at once)."""
    q: queue.Queue[threading.Lock | None] | Inbox[threading.Lock | None]
    if inbox:
        q = Inbox(8192)
        taken = lambda: q.take(1024)  # noqa: E731
    else:
        q = queue.Queue()
        taken = lambda: [q.get()]  # noqa: E731

    def worker() -> None:
        while True:
            for lock in taken():
                if lock is None:
                    return
                lock.release()

    w = threading.Thread(target=worker)
    w.start()

    def produce(count: int) -> None:
        for _ in range(count):
            lock = threading.Lock()
            lock.acquire()
            q.put(lock)
            lock.acquire()

    threads = [threading.Thread(target=produce, args=(n // producers,)) for _ in range(producers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = n / (time.perf_counter() - start)
    q.put(None)
    w.join()
    return rate


def relay_drain(n: int, lease: int) -> float:
    with tempfile.TemporaryDirectory() as d, Spool.open(Path(d), durability="full") as spool:
        spool.register_sinks(["a"])
        for i in range(0, n, 1000):
            spool.put_many(events(min(1000, n - i)))
        start = time.perf_counter()
        done = 0
        while records := spool.lease("a", lease).records:
            spool.ack("a", records[-1].seq)
            spool.sync()  # committed before the next lease, as persist-queue's ack is
            done += len(records)
        assert done == n
        return n / (time.perf_counter() - start)


def pq_put_and_drain(n: int) -> tuple[float, float]:
    import persistqueue  # the baseline; installed with the test extra

    bodies = [e.to_json() for e in events(n)]
    with tempfile.TemporaryDirectory() as d:
        q = persistqueue.SQLiteAckQueue(d, auto_commit=True, multithreading=True)
        start = time.perf_counter()
        for b in bodies:
            q.put(b)
        put = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            item = q.get(block=False)
            q.ack(item)
        drain = n / (time.perf_counter() - start)
        return put, drain


def backlog_rss(n: int) -> tuple[float, float, float]:
    """RSS before, with ``n`` events queued (after leasing the head), and after draining up
    to 10k of them."""
    gc.collect()
    with tempfile.TemporaryDirectory() as d, Spool.open(Path(d), durability="normal") as spool:
        spool.register_sinks(["a"])
        before = rss_mb()
        for _ in range(0, n, 1000):
            spool.put_many(events(1000))
        gc.collect()
        spool.lease("a", 100)
        spool.stats()
        loaded = rss_mb()
        for _ in range(100):
            records = spool.lease("a", 100).records
            if not records:
                break
            spool.ack("a", records[-1].seq)
        return before, loaded, rss_mb()


def median(f: Callable[[], float], runs: int) -> float:
    return statistics.median(f() for _ in range(runs))


def json_rows(
    rows: list[tuple[str, float, str, float | None]], pq_put: float, pq_drain: float, backlog: int
) -> list[Row]:
    """The table's relay rows, each against persist-queue; then the backlog's RSS."""
    baselines = {"pq put": pq_put, "pq get+ack": pq_drain}
    out = [
        row(f"spool {what[6:]}", "ev/s", rate, baselines[base], f"persist-queue {base[3:]}")
        for what, rate, base, _ in rows
        if what.startswith("relay ")
    ]
    if backlog:
        before, loaded, _ = backlog_rss(backlog)
        out.append(row(f"spool RSS, {backlog:,} queued", "MB", loaded, before, "empty spool"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--backlog", type=int, default=1_000_000, help="0: skip the RSS figure")
    p.add_argument("--runs", type=int, default=3, help="median of this many runs")
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    n, runs = args.events, args.runs

    pq = [pq_put_and_drain(n) for _ in range(runs)]
    pq_put = statistics.median(x[0] for x in pq)
    pq_drain = statistics.median(x[1] for x in pq)
    rows: list[tuple[str, float, str, float | None]] = [
        ("persist-queue SQLiteAckQueue put", pq_put, "", None),
        ("persist-queue SQLiteAckQueue get+ack", pq_drain, "", None),
    ]
    for producers in (1, 8, 64):
        rate = median(lambda producers=producers: relay_put(n, producers), runs)
        rows.append((f"relay put, {producers} producers", rate, "pq put", rate / pq_put))
    rate = median(lambda: relay_put_async(n, 64, 20), runs)
    rows.append(("relay put_async, 64 producers x 20", rate, "pq put", rate / pq_put))
    for inbox, how in ((False, "queue.Queue"), (True, "Inbox")):
        rate = median(lambda inbox=inbox: handoff_ceiling(n, 64, inbox), runs)
        rows.append((f"(no spool: hand-off, 64, {how})", rate, "pq put", rate / pq_put))
    for lease in (1, 100):
        rate = median(lambda lease=lease: relay_drain(n, lease), runs)
        rows.append((f"relay lease+ack, {lease} per lease", rate, "pq get+ack", rate / pq_drain))
    if args.json:
        emit(json_rows(rows, pq_put, pq_drain, args.backlog))
        return

    print(
        f"\nspool benchmark: {n:,} events of ~{len(events(1)[0].to_json())} B, median of {runs}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus\n"
    )
    print(f"| {'what':<38} | {'events/s':>10} | {'vs':<10} | {'ratio':>7} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|{'-' * 9}|")
    for what, rate, base, ratio in rows:
        r = f"{ratio:.1f}x" if ratio is not None else ""
        print(f"| {what:<38} | {rate:>10,.0f} | {base:<10} | {r:>7} |")

    if not args.backlog:
        return
    before, loaded, after = backlog_rss(args.backlog)
    print(
        f"\nRSS with a {args.backlog:,}-event backlog: {before:.1f} MB before, {loaded:.1f} MB "
        f"queued ({loaded - before:+.1f} MB), {after:.1f} MB after draining 10,000 "
        f"(target: growth < 20 MB)"
    )


if __name__ == "__main__":
    main()
