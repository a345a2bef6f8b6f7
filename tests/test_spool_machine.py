"""A Hypothesis state machine: random put/lease/ack/retry/dead-letter/redeliver/purge/reopen
sequences against the real spool, checked after every step against a plain-Python model."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.event import Event
from relay.spool import ROW_OVERHEAD, Spool

SINKS = ("a", "b")


@dataclass
class Entry:
    n: int
    attempts: int = 0
    failures: int = 0


@dataclass
class Model:
    queues: dict[str, list[Entry]] = field(default_factory=lambda: {s: [] for s in SINKS})
    dead: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SINKS})


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-sm-"))
        self.spool = self._open()
        self.model = Model()
        self.next_n = 0

    def _open(self) -> Spool:
        spool = Spool.open(self.dir, durability="normal", check=True)
        spool.register_sinks(SINKS)
        return spool

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir)

    @rule(count=st.integers(1, 5))
    def put(self, count: int) -> None:
        events = []
        for _ in range(count):
            events.append(Event.new(node="m", source="test", name="x", payload=self.next_n))
            for sink in SINKS:
                self.model.queues[sink].append(Entry(self.next_n))
            self.next_n += 1
        self.spool.put_many(events)

    @rule(sink=st.sampled_from(SINKS), k=st.integers(1, 4))
    def ack(self, sink: str, k: int) -> None:
        records = self.spool.lease(sink, k).records
        if records:
            self.spool.ack(sink, records[-1].seq)
        del self.model.queues[sink][: len(records)]

    @precondition(lambda self: any(self.model.queues.values()))
    @rule(sink=st.sampled_from(SINKS), permanent=st.booleans())
    def retry(self, sink: str, permanent: bool) -> None:
        lease = self.spool.lease(sink)
        if not lease.records:
            return
        got = self.spool.retry(sink, lease.records[0].seq, "err", permanent=permanent)
        head = self.model.queues[sink][0]
        head.attempts += 1
        head.failures += int(permanent)
        assert got == (head.attempts, head.failures)

    @rule(sink=st.sampled_from(SINKS))
    def dead_letter(self, sink: str) -> None:
        lease = self.spool.lease(sink)
        if not lease.records:
            return
        self.spool.dead_letter(sink, lease.records[0].seq, "poison")
        self.model.dead[sink].append(self.model.queues[sink].pop(0).n)

    @rule(sink=st.sampled_from((*SINKS, None)))
    def redeliver(self, sink: str | None) -> None:
        moved = self.spool.redeliver(sink)
        expected = 0
        for s in SINKS if sink is None else (sink,):
            self.model.queues[s].extend(Entry(n) for n in self.model.dead[s])
            expected += len(self.model.dead[s])
            self.model.dead[s] = []
        assert moved == expected

    @rule(sink=st.sampled_from(SINKS))
    def purge(self, sink: str) -> None:
        assert self.spool.purge(sink) == len(self.model.dead[sink])
        self.model.dead[sink] = []

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = self._open()

    @invariant()
    def matches_model(self) -> None:
        for sink in SINKS:
            lease = self.spool.lease(sink, 10_000)
            assert [r.event.payload for r in lease.records] == [
                e.n for e in self.model.queues[sink]
            ]
            if lease.records:
                head = self.model.queues[sink][0]
                assert (lease.attempts, lease.failures) == (head.attempts, head.failures)
            dead = [Event.from_json(d.body).payload for d in self.spool.dead_letters(sink)]
            assert sorted(dead) == sorted(self.model.dead[sink])
        stats = {s.name: s for s in self.spool.stats().sinks}
        for sink in SINKS:
            assert stats[sink].depth == len(self.model.queues[sink])
            assert stats[sink].dead_letters == len(self.model.dead[sink])

    @invariant()
    def bytes_accounting_is_exact(self) -> None:
        conn = sqlite3.connect(self.dir / "spool.db")
        try:
            real = conn.execute(
                "SELECT (SELECT coalesce(sum(length(body) + ?1), 0) FROM events) + "
                "(SELECT coalesce(sum(length(body) + length(reason) + ?1), 0) FROM dead_letters)",
                (ROW_OVERHEAD,),
            ).fetchone()[0]
        finally:
            conn.close()
        assert self.spool.stats().bytes == real


TestSpoolMachine = SpoolMachine.TestCase
