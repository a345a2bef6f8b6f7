"""Every write to the spool file, as done inside one group-commit transaction by the writer
thread: events, the sinks' cursors and counters, dead letters (device commands:
``relay.spool.command_rows``).

A ``Txn`` keeps the byte count in Python while the operations of the batch run (its
``Figures``, folded into ``meta`` only by commits that write other pages anyway: see
``relay.spool.figures``); puts are collected and inserted with one ``executemany`` before
anything that reads the table. Each operation checks what it needs before it writes, so an
operation that is refused (``SpoolFull``, unknown sink) leaves nothing behind and its
neighbours in the same commit go on.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from relay.errors import SpoolFull
from relay.event import Event
from relay.spool import reads
from relay.spool.figures import Figures, Known
from relay.spool.model import BrokerDrops, SourceKey, WhenFull
from relay.spool.schema import (
    BROKER_KEYS,
    DL_BYTES,
    EVENT_BYTES,
    KEEP_KEYED,
    ROW_OVERHEAD,
    SOURCES,
    WEAR_KEYS,
    broker_values,
)

log = logging.getLogger("relay.spool")

TRIM_BATCH = 512  # delete delivered rows this many at a time: fewer, larger page writes


class Txn:
    def __init__(
        self,
        c: sqlite3.Cursor,
        *,
        max_bytes: int,
        when_full: WhenFull,
        now: float,
        known: Known | None = None,
    ):
        self.c = c
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.now = now
        self.wakes = False  # whether the batch added work for the sinks
        self.commands_added = False  # whether it recorded a device command
        self.dropped = 0
        self.inserted = 0  # events this commit stores
        self.fold = False  # the writer's say: this commit writes other pages (acks) anyway
        self.figures = Figures(c, known)  # ``known``: what the writer's last commit left
        self._trim_due = False  # something moved a cursor or freed rows
        self._rows: list[tuple[str, bytes, float, int | None, bytes | None]] = []
        self._tallies: dict[str, int] = {}  # "rejected:<source>" -> events this batch

    @property
    def used(self) -> int:
        """Bytes the spool's rows take, as of now in this transaction."""
        return self.figures.used

    @used.setter
    def used(self, value: int) -> None:
        self.figures.used = value

    def _freed(self, n: int) -> None:
        """``n`` bytes freed, or taken, other than by inserting events."""
        self.figures.used = self.used - n
        self.figures.changed = True

    def _meta(self, key: str) -> int:
        return int(self.c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def finish(self) -> None:
        self.flush()
        if self._trim_due:
            self.trim()
        self.figures.finish(fold=self.fold)
        if self.dropped:
            self.c.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (self.dropped,))
        for key, count in self._tallies.items():
            self.c.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + ?",
                (key, count, count),
            )

    def _tally(self, what: str, source: str, count: int = 1) -> None:
        """Count refused events in the file, in this commit (stored ones are counted as the
        figures fold): exact across processes (relay push writes here too) and restarts."""
        key = f"{what}:{source if source in SOURCES else 'other'}"
        self._tallies[key] = self._tallies.get(key, 0) + count

    def flush(self) -> None:
        if self._rows:
            self.inserted += len(self._rows)
            seqs = self.figures.next_seqs(len(self._rows))
            self.c.executemany(
                "INSERT INTO events (seq, id, body, spooled_at, mid, digest) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(seq, *row) for seq, row in zip(seqs, self._rows, strict=True)],
            )
            self._rows = []

    # ------------------------------------------------------------ producers

    def insert_once(self, event: Event, key: SourceKey) -> bool:
        """Queue ``event`` with its producer's ``key``; False (nothing stored) when the key
        says the producer sent it before and it is stored already."""
        if key.resent and self._seen(key):
            return False
        self.insert((event,), key=key)
        return True

    def insert(
        self, events: Sequence[Event], *, force: bool = False, key: SourceKey | None = None
    ) -> None:
        """Queue events for every sink. ``force``: past the size cap (command outcomes);
        ``key``: the producer's, recorded with them."""
        mid, digest = (key.id, key.digest) if key is not None else (None, None)
        rows = [(e.id, e.to_json(), self.now, mid, digest) for e in events]
        need = sum(len(r[1]) + ROW_OVERHEAD for r in rows)
        if self.used + need > self.max_bytes and not force:
            self.flush()
            self.trim(force=True)  # delivered rows still waiting for a batch delete
        if self.used + need > self.max_bytes and not force:
            if self.when_full == "reject" or need > self.max_bytes:
                raise SpoolFull(
                    f"spool full ({self.used:,} of {self.max_bytes:,} bytes, when_full = "
                    f'"{self.when_full}"): the sinks are not keeping up; see relay status'
                )
            self._drop_oldest(self.used + need - self.max_bytes)
        self._rows.extend(rows)
        self.used += need
        self.wakes = True

    def _seen(self, key: SourceKey) -> bool:
        """Whether an event with ``key`` is among the newest rows (see ``KEEP_KEYED``)."""
        self.flush()
        return (
            self.c.execute(
                "SELECT 1 FROM events WHERE seq > ? AND mid = ? AND digest = ? LIMIT 1",
                (self.figures.high_water() - KEEP_KEYED, key.id, key.digest),
            ).fetchone()
            is not None
        )

    def _drop_oldest(self, excess: int) -> None:
        self.flush()
        self.figures.before_delete()
        freed = dropped = 0
        while freed < excess:
            rows = self.c.execute(
                f"SELECT seq, length(body) + {ROW_OVERHEAD} FROM events ORDER BY seq LIMIT 256"
            ).fetchall()
            if not rows:
                break
            for seq, size in rows:
                if freed >= excess:
                    break
                self.c.execute("DELETE FROM events WHERE seq=?", (seq,))
                freed, dropped = freed + size, dropped + 1
        while freed < excess:  # only dead letters are left to make room
            row = self.c.execute(
                f"SELECT sink, seq, length(body) + length(reason) + {ROW_OVERHEAD} "
                "FROM dead_letters ORDER BY dead_at LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self.c.execute("DELETE FROM dead_letters WHERE sink=? AND seq=?", row[:2])
            freed, dropped = freed + row[2], dropped + 1
        self._freed(freed)
        self.dropped += dropped

    def reject(self, sink: str, event: Event, reason: str) -> None:
        body, reason = event.to_json(), reason[:1000]
        need = len(body) + len(reason) + ROW_OVERHEAD
        if self.used + need > self.max_bytes:
            raise SpoolFull(f"spool full ({self.used:,} of {self.max_bytes:,} bytes)")
        self.flush()
        seq = self.c.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM dead_letters WHERE sink=?", (sink,)
        ).fetchone()[0]
        self.c.execute(
            "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sink, seq, event.id, body, reason, 1, self.now),
        )
        self._freed(-need)
        self._tally("rejected", event.source)

    # ------------------------------------------------------------ sinks

    def register(self, names: list[str]) -> None:
        self.flush()
        c = self.c
        known = {r[0] for r in c.execute("SELECT name FROM sinks")}
        for gone in sorted(known - set(names)):
            pending = reads.pending_count(c, gone, reads.sink_row(c, gone).cursor)
            log.warning(
                "sink %s is no longer configured: forgetting it (%d events it had not received;"
                " its dead letters are kept)",
                gone,
                pending,
            )
            self.figures.before_delete()
            c.execute("DELETE FROM sinks WHERE name=?", (gone,))
            c.execute("DELETE FROM events WHERE sink IS NOT NULL AND sink=?", (gone,))
            self._trim_due = True  # its cursor no longer holds rows back
        # A sink new to this file starts after the newest event, except the very first ones,
        # which take what relay push queued before the agent ever ran.
        first_ever = self._meta("sinks_seen") == 0
        start = 0 if first_ever else c.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        for name in names:
            if name not in known:
                c.execute("INSERT INTO sinks (name, cursor) VALUES (?, ?)", (name, start))
        if names and first_ever:
            c.execute("UPDATE meta SET value = 1 WHERE key='sinks_seen'")
        # Start-up is the moment to correct any drift in the byte count.
        self.figures.changed = True
        self.used = c.execute(
            f"SELECT (SELECT {EVENT_BYTES} FROM events) + (SELECT {DL_BYTES} FROM dead_letters)"
        ).fetchone()[0]
        self.wakes = True

    def ack(self, sink: str, upto: int) -> None:
        self.flush()
        cursor = reads.sink_row(self.c, sink).cursor
        if upto <= cursor:
            return  # a repeated ack
        n = self.c.execute(
            "SELECT count(*) FROM events WHERE seq > ? AND seq <= ? AND (sink IS NULL OR sink=?)",
            (cursor, upto, sink),
        ).fetchone()[0]
        self.c.execute(
            "UPDATE sinks SET cursor=?, head_seq=0, attempts=0, failures=0, "
            "delivered = delivered + ? WHERE name=?",
            (upto, n, sink),
        )
        self._trim_due = True

    def retry(self, sink: str, seq: int, error: str, permanent: bool) -> tuple[int, int]:
        attempts, failures = reads.sink_row(self.c, sink).counters_for(seq)
        attempts, failures = attempts + 1, failures + int(permanent)
        self.c.execute(
            "UPDATE sinks SET head_seq=?, attempts=?, failures=?, last_error=?, last_error_at=? "
            "WHERE name=?",
            (seq, attempts, failures, error[:1000], self.now, sink),
        )
        return attempts, failures

    def dead_letter(self, sink: str, seq: int, reason: str) -> None:
        self.flush()
        sink_row = reads.sink_row(self.c, sink)
        row = self.c.execute("SELECT id, body FROM events WHERE seq=?", (seq,)).fetchone()
        if row is None or seq <= sink_row.cursor:
            return  # already past it (a repeated call), or dropped by drop_oldest
        reason = reason[:1000]
        tries = max(sink_row.counters_for(seq)[0], 1)
        self.c.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sink, seq, row[0], row[1], reason, tries, self.now),
        )
        self.c.execute(
            "UPDATE sinks SET cursor=?, head_seq=0, attempts=0, failures=0, dead = dead + 1, "
            "last_error=?, last_error_at=? WHERE name=?",
            (seq, reason, self.now, sink),
        )
        self._freed(-(len(row[1]) + len(reason) + ROW_OVERHEAD))
        self._trim_due = True

    # ------------------------------------------------------------ dead letters

    def redeliver(self, sink: str | None, ids: Sequence[str]) -> int:
        self.flush()
        where, args = reads.dl_filter(sink, ids)
        rows = self.c.execute(
            f"SELECT sink, seq, id, body, reason FROM dead_letters{where} ORDER BY seq", args
        ).fetchall()
        known = {r[0] for r in self.c.execute("SELECT name FROM sinks")}
        moved = 0
        for dl_sink, seq, event_id, body, reason in rows:
            if dl_sink not in known:
                continue  # that sink is no longer configured: nothing would ever send it
            self.c.execute(
                "INSERT INTO events (seq, id, body, spooled_at, sink) VALUES (?, ?, ?, ?, ?)",
                (self.figures.next_seqs(1)[0], event_id, body, self.now, dl_sink),
            )
            self.c.execute("DELETE FROM dead_letters WHERE sink=? AND seq=?", (dl_sink, seq))
            self._freed(len(reason))  # the row keeps its body and overhead, loses its reason
            moved += 1
        self.wakes = self.wakes or moved > 0
        return moved

    def purge(self, sink: str | None, ids: Sequence[str]) -> int:
        where, args = reads.dl_filter(sink, ids)
        count, freed = self.c.execute(
            f"SELECT count(*), {DL_BYTES} FROM dead_letters{where}", args
        ).fetchone()
        self.c.execute(f"DELETE FROM dead_letters{where}", args)
        self._freed(freed)
        return int(count)

    # ------------------------------------------------------------ housekeeping

    def trim(self, *, force: bool = False) -> None:
        """Delete rows every sink is done with, a batch at a time; all of them if ``force``
        (room is needed), the keyed ones that recognise a redelivery (``KEEP_KEYED``) too."""
        c = self.c
        low = c.execute("SELECT min(cursor) FROM sinks").fetchone()[0]
        # Two subqueries: min() and max() in one SELECT would scan the whole table.
        first, last = c.execute(
            "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)"
        ).fetchone()
        if low is None or first is None or low < first:
            return
        upto = low if force else min(low, first + 16 * TRIM_BATCH)
        if upto - first + 1 < TRIM_BATCH and low < last and not force:
            return  # not a batch even if every row were done: spare the count's scan
        done = "FROM events WHERE seq <= ? AND sink IS NULL"
        args: tuple[int, ...] = (upto,)
        if not force:
            done += " AND (mid IS NULL OR seq <= ?)"
            args = (upto, self.figures.high_water() - KEEP_KEYED)
        count, freed = c.execute(f"SELECT count(*), {EVENT_BYTES} {done}", args).fetchone()
        if count < TRIM_BATCH and low < last and not force:
            return  # wait for a fuller batch, unless every sink has caught up
        if count:
            self.figures.before_delete()
            c.execute(f"DELETE {done}", args)
        # A replay for one sink goes as soon as that sink has it.
        for sink, cursor in c.execute("SELECT name, cursor FROM sinks").fetchall():
            mine = "FROM events WHERE sink IS NOT NULL AND sink = ? AND seq <= ?"
            size = c.execute(f"SELECT {EVENT_BYTES} {mine}", (sink, cursor)).fetchone()[0]
            if size:
                self.figures.before_delete()
                c.execute(f"DELETE {mine}", (sink, cursor))
                freed += size
        if freed:
            self._freed(freed)

    # ------------------------------------------------------------ the agent's figures

    def note_wear(self, wear: tuple[int, int] | None) -> None:
        """Bytes written per event over how many seconds (relay.spool.wear), and when."""
        if wear is not None:
            values = [*zip(WEAR_KEYS, (*wear, int(self.now)), strict=True)]
            self.c.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                "excluded.value",
                values,
            )

    def note_broker_drops(self, drops: BrokerDrops) -> None:
        self.c.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(zip(BROKER_KEYS, broker_values(drops), strict=True)),
        )
