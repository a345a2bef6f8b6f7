"""The spool's running figures, kept in ``meta`` off the pages an event's commit writes: the
bytes its rows take (for the size cap), the events stored per source (for the metrics), and
the highest seq ever given (so that no seq is given twice).

On an SD card every page a commit writes is worn: an event's commit writes its row and
nothing else, and these figures are *folded* into ``meta`` by the commits that write other
pages anyway (a sink's acks, a trim, a dead letter) or once ``FOLD_EVERY`` events wait.
Until then the rows after ``folded_seq`` (those without a sink: a replay is counted as it
moves) are not in ``bytes`` nor in the tallies, and whoever reads a figure adds them: a few
rows, whichever process stored them (``relay push`` writes the file too).

The seq: without AUTOINCREMENT (whose ``sqlite_sequence`` page would be written by every
insert), SQLite gives the highest seq in the table plus one, so a seq would come again once
the newest rows were deleted, and a sink whose cursor is past it would never get that
event. So every insert names its seq, one above the highest ever given: the table's, the
``seq_floor`` that a commit deleting rows leaves in ``meta``, and (a file made before this
layout) ``sqlite_sequence``'s.

Reading them takes queries (the unfolded rows' bytes among them) that would be most of a
small commit's work, so the writer keeps what its last commit left (:class:`Known`) and the
next transaction starts from it, unless another process (``relay push``, ``relay dlq``)
committed since: SQLite's ``PRAGMA data_version`` says so.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from relay.spool.schema import FOLDED, ROW_OVERHEAD, SOURCES, TALLY_SOURCE

FOLD_EVERY = 512  # events that may wait to be folded into the figures


def high_water(c: sqlite3.Connection | sqlite3.Cursor) -> int:
    """The highest seq ever given: it never goes back, whatever was deleted."""
    return int(
        c.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM events), 0), "
            "coalesce((SELECT value FROM meta WHERE key='seq_floor'), 0), "
            "coalesce((SELECT seq FROM sqlite_sequence WHERE name='events'), 0))"
        ).fetchone()[0]
    )


def unfolded_bytes(c: sqlite3.Connection | sqlite3.Cursor) -> int:
    found = c.execute(f"SELECT coalesce(sum(length(body) + ?), 0) {FOLDED}", (ROW_OVERHEAD,))
    return int(found.fetchone()[0])


def unfolded_tallies(c: sqlite3.Connection | sqlite3.Cursor) -> dict[str, int]:
    """Events not folded yet, by source (one not in ``SOURCES`` as "other")."""
    found: dict[str, int] = {}
    for source, count in c.execute(f"SELECT {TALLY_SOURCE}, count(*) {FOLDED} GROUP BY 1"):
        key = source if source in SOURCES else "other"
        found[key] = found.get(key, 0) + count
    return found


@dataclass(frozen=True)
class Known:
    """The figures as the writer's last commit left them, and the file's ``data_version``
    as that commit saw it."""

    used: int
    next_seq: int
    folded_seq: int
    data_version: int


class Figures:
    """A transaction's view of the figures (on the writer's cursor, inside its transaction,
    which began before this is made); ``known``: what the last commit left."""

    def __init__(self, c: sqlite3.Cursor, known: Known | None = None) -> None:
        self.c = c
        self.changed = False  # bytes changed other than by inserting events: fold them
        self._floor: int | None = None  # the high water before rows were deleted
        self._used: int | None = None
        self._next_seq: int | None = None
        self._folded: int | None = None  # folded_seq in meta, as of now
        self._tallied_to: int | None = None  # rows up to here are in self._tallies
        self._tallies: dict[str, int] = {}
        self._version = int(c.execute("PRAGMA data_version").fetchone()[0])
        if known is not None and known.data_version == self._version:
            self._used, self._next_seq = known.used, known.next_seq
            self._folded = known.folded_seq

    @property
    def used(self) -> int:
        """Bytes the rows take, as of now in this transaction."""
        if self._used is None:
            self._used = self._meta("bytes") + unfolded_bytes(self.c)
        return self._used

    @used.setter
    def used(self, value: int) -> None:
        self._used = value

    def high_water(self) -> int:
        """The highest seq ever given, as of now in this transaction."""
        return max(high_water(self.c), self._floor or 0, (self._next_seq or 1) - 1)

    def next_seqs(self, n: int) -> range:
        """``n`` seqs for new rows, in order."""
        if self._next_seq is None:
            self._next_seq = max(high_water(self.c), self._floor or 0) + 1
        first, self._next_seq = self._next_seq, self._next_seq + n
        return range(first, first + n)

    def before_delete(self) -> None:
        """Rows are about to be deleted: count those not folded yet (once gone, they could
        not be), and keep the high water (the newest row may go)."""
        if self._floor is None:
            self._floor = max(high_water(self.c), (self._next_seq or 1) - 1)
        _ = self.used  # counted before any row goes, so what goes is taken off once
        self.tally_rows()

    @property
    def folded_seq(self) -> int:
        if self._folded is None:
            self._folded = self._meta("folded_seq")
        return self._folded

    def tally_rows(self) -> None:
        """Count the rows not folded yet into this transaction's tallies."""
        if self._tallied_to is None:
            self._tallied_to = self.folded_seq
        top = self.c.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if top <= self._tallied_to:
            return
        for source, count in self.c.execute(
            f"SELECT {TALLY_SOURCE}, count(*) FROM events "
            "WHERE seq > ? AND sink IS NULL GROUP BY 1",
            (self._tallied_to,),
        ):
            key = f"ingested:{source if source in SOURCES else 'other'}"
            self._tallies[key] = self._tallies.get(key, 0) + count
        self._tallied_to = top

    def finish(self, *, fold: bool) -> None:
        """Fold the figures into ``meta`` if this commit writes other pages anyway
        (``fold``, or something but inserts changed the bytes) or enough events wait."""
        waiting = self._next_seq is not None and self._next_seq - 1 - self.folded_seq >= FOLD_EVERY
        if not (fold or self.changed or self._floor is not None or waiting):
            return
        used = self.used  # before the fold moves folded_seq: it counts what waits
        self.tally_rows()
        assert self._tallied_to is not None
        values = [("bytes", used), ("folded_seq", self._tallied_to)]
        if self._floor is not None:
            values.append(("seq_floor", max(self._floor, (self._next_seq or 1) - 1)))
        self.c.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            values,
        )
        self.c.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + ?",
            [(key, n, n) for key, n in self._tallies.items()],
        )
        self._folded = self._tallied_to

    def known(self) -> Known:
        """What this transaction leaves, for the next one (once it is committed)."""
        if self._next_seq is None:
            self._next_seq = self.high_water() + 1
        return Known(self.used, self._next_seq, self.folded_seq, self._version)

    def _meta(self, key: str) -> int:
        row = self.c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0
