"""The ``Spool`` object: the thread-safe front of the spool file.

Writes go through its :class:`~relay.spool.writer.Writer`; reads (``relay.spool.reads``) use
a connection of their own."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from relay.config import SpoolConfig
from relay.errors import SpoolClosed, SpoolError
from relay.event import Command, Event
from relay.spool import command_rows, file, reads
from relay.spool.chain import Chain, chain_reply, chained
from relay.spool.changes import Changes
from relay.spool.figures import Known
from relay.spool.model import (
    BrokerDrops,
    DeadLetter,
    Done,
    Durability,
    Lease,
    SinkStats,
    SourceKey,
    SpoolStats,
    Tallies,
    WhenFull,
)
from relay.spool.overlay import Overlay
from relay.spool.txn import Txn
from relay.spool.wear import WearMeter
from relay.spool.writer import AS_SOON_AS_SAFE, Pace, Writer

log = logging.getLogger("relay.spool")

R = TypeVar("R")


class Spool:
    """The spool. Thread-safe; open with :meth:`open`, close with :meth:`close`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        reader: sqlite3.Connection | None = None,
        path: Path | None,
        durability: Durability,
        max_bytes: int,
        when_full: WhenFull,
        pace: Pace = AS_SOON_AS_SAFE,
    ) -> None:
        self.path = path
        self.durability = durability
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._conn = conn  # the writer's
        self._lock = threading.Lock()  # guards it
        # Reads (lease, stats) use their own connection, so that a forwarder leasing its
        # next event does not wait for the writer's fsync (WAL lets readers run during a
        # commit). An in-memory database has only the one connection.
        self._rconn = reader or conn
        self._rlock = threading.Lock() if reader is not None else self._lock
        self._changes = Changes()
        self._last_drop_log = float("-inf")
        self._unsettled = Overlay()  # acks and retry counters, maybe not committed yet
        self._known: Known | None = None  # the figures the writer's last commit left
        self._writer = Writer(conn, self._lock, self._new_txn, self._on_committed, pace=pace)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        durability: Durability = "full",
        max_bytes: int = 256_000_000,
        when_full: WhenFull = "reject",
        check: bool = False,
        pace: Pace = AS_SOON_AS_SAFE,
    ) -> Spool:
        """Open (creating if needed) ``<state_dir>/spool.db``; ``SpoolError`` if it cannot.

        ``check`` (the agent sets it) runs ``PRAGMA quick_check`` and moves a corrupt file
        aside, so that a damaged file never becomes a crash loop. ``pace``: how long acks,
        and puts answered by callback, may wait for company (``relay.spool.writer``).
        """
        conn, reader, path = file.connections(state_dir, durability, check=check)
        return cls(
            conn,
            reader=reader,
            path=path,
            durability=durability,
            max_bytes=max_bytes,
            when_full=when_full,
            pace=pace,
        )

    @classmethod
    def configured(cls, cfg: SpoolConfig, state_dir: Path, *, agent: bool = False) -> Spool:
        """The spool as ``[spool]`` configures it: for the agent (``agent``: the integrity
        check at open), or for a short-lived tool (``relay push``, ``status``, ``dlq``),
        which cannot reach a spool held in the agent's memory."""
        if cfg.durability == "memory" and not agent:
            raise SpoolError(
                'spool durability is "memory": only the running agent holds the queue, so '
                "this command cannot reach it"
            )
        return cls.open(
            state_dir,
            durability=cfg.durability,
            max_bytes=int(cfg.max_size),
            when_full=cfg.when_full,
            check=agent,
            pace=Pace(commit_interval=cfg.commit_interval.total_seconds(), wear=WearMeter())
            if agent
            else AS_SOON_AS_SAFE,
        )

    def close(self) -> None:
        """Finish the queued writes, stop the writer and close the file. Idempotent."""
        if not self._writer.stop():
            return
        self._changes.close()
        self._writer.join()
        with self._rlock:
            self._rconn.close()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._writer.closed

    # ---------------------------------------------------------------- producers

    def put(self, event: Event) -> None:
        """Store one event; returns once it is committed. Raises ``SpoolFull``/``SpoolError``."""
        self._writer.call(lambda t: t.insert((event,)))

    def put_many(self, events: Sequence[Event]) -> None:
        """Store events in this order, in one commit; returns once it is committed."""
        self._writer.call(lambda t: t.insert(events))

    def put_async(self, events: Sequence[Event], done: Done, *, chain: Chain | None = None) -> None:
        """Queue events for the next commit and return at once.

        ``done(None)`` is called on the writer thread after the commit that stored them, or
        ``done(error)`` if they were not stored. ``done`` must be quick and must not call the
        spool's blocking methods: it runs on the thread that would serve them. With a
        ``chain``, nothing is stored after the first put of that chain that was not.
        """
        self._writer.submit(
            chained(lambda t: t.insert(events), chain),
            chain_reply(lambda _, error: done(error), chain),
            window=True,
        )

    def put_once_async(
        self,
        event: Event,
        key: SourceKey,
        done: Callable[[bool | None, SpoolError | None], None],
        *,
        chain: Chain | None = None,
    ) -> None:
        """As :meth:`put_async`, for a message its producer may send again: ``key`` is
        recorded with the event, in the same commit, and a message sent again
        (``key.resent``) that is stored already is not stored twice. ``done(stored,
        error)``: ``stored`` is False for such a message."""
        self._writer.submit(
            chained(lambda t: t.insert_once(event, key), chain),
            chain_reply(done, chain),
            window=True,
        )

    def reject_async(self, sink: str, event: Event, reason: str, done: Done) -> None:
        """Store ``event`` straight into ``sink``'s dead letters, with ``reason``: input
        refused at the door (a message too large, a topic that is not UTF-8), kept where
        ``relay dlq list`` shows it, never forwarded. ``done`` as for put_async."""
        self._writer.submit(lambda t: t.reject(sink, event, reason), lambda _, error: done(error))

    def sync(self) -> None:
        """Return once every write queued before it is committed (acks waiting included)."""
        self._writer.sync()

    # ---------------------------------------------------------------- sinks

    def register_sinks(self, names: Iterable[str]) -> None:
        """Make the spool's sinks exactly ``names``. A sink new to this file starts after the
        newest event (no history), except the first sinks ever registered, which take what
        producers queued already. A sink no longer named is forgotten, with a warning."""
        wanted = list(names)
        self._writer.call(lambda t: t.register(wanted))

    def lease(self, sink: str, limit: int = 1, *, after: int = 0) -> Lease:
        """The first ``limit`` events after ``sink``'s cursor, oldest first (maybe none);
        ``after``: after that seq, if it is past the cursor (what is in flight already)."""
        with self._rlock:
            self._check_open()
            row = self._unsettled.row(sink, reads.sink_row(self._rconn, sink))
            rows = reads.pending(self._rconn, sink, max(row.cursor, after), limit)
        records, bad = reads.records(rows)
        if bad is not None and not records and after <= row.cursor:
            # Only damage that passed quick_check gets here; it must not wedge the sink. (A
            # bad row past what is in flight waits until it is the head.)
            log.error("sink %s: spool row %d is not a valid event: dead-lettering it", sink, bad)
            self.dead_letter(sink, bad, "spool row is not a valid event")
            return self.lease(sink, limit, after=after)
        attempts, failures = row.counters_for(records[0].seq) if records else (0, 0)
        return Lease(sink, records, attempts, failures, row.cursor)

    def ack(self, sink: str, upto_seq: int) -> None:
        """Mark ``sink``'s events up to ``upto_seq`` delivered, and return at once.

        From now on this spool's leases and statistics start past them; the file records it
        in a commit at most ``ack_delay`` later (sooner when anything else is written, or on
        :meth:`sync`). That commit is not fsync'd: an ack lost to a crash or a power cut only
        means its events are sent again, which at-least-once allows.
        """
        self._unsettled.ack(sink, upto_seq)
        self._writer.ack(lambda t: t.ack(sink, upto_seq))

    def retry(self, sink: str, seq: int, error: str, *, permanent: bool) -> tuple[int, int]:
        """Record a failed attempt at ``sink``'s head ``seq``; returns (attempts, failures)
        at once. Written as an ack is (no fsync of its own, maybe a moment later): a far
        end that fails often costs no commit per failure; a count lost to a crash only
        means one more try."""
        file_row = self._read(lambda c: reads.sink_row(c, sink))
        counts = self._unsettled.retry(
            sink, file_row, seq, error, permanent=permanent, now=time.time()
        )
        self._writer.ack(lambda t: t.retry(sink, seq, error, permanent))
        return counts

    def dead_letter(self, sink: str, seq: int, reason: str) -> None:
        """Move ``sink``'s head ``seq`` to its dead letters with ``reason``, and go past it."""
        self._writer.call(lambda t: t.dead_letter(sink, seq, reason))
        self._unsettled.forget(sink)

    # ---------------------------------------------------------------- device commands

    def record_command(self, cmd: Command) -> bool:
        """Queue a device command once committed; False if its id was seen before."""
        return self._writer.call(lambda t: command_rows.record(t, cmd))

    def record_command_async(
        self,
        cmd: Command,
        done: Callable[[bool | None, SpoolError | None], None],
        *,
        key: SourceKey | None = None,
    ) -> None:
        """As :meth:`record_command`, reporting ``done(recorded, error)`` after the commit
        (on the writer thread: ``done`` must be quick and must not call the spool). With a
        ``key`` (see :meth:`put_once_async`), a command its producer sent again and that is
        recorded already is not recorded twice (``recorded`` False)."""
        self._writer.submit(lambda t: command_rows.record(t, cmd, key), done)

    def start_command(self, command_id: str) -> None:
        """Mark it running, committed: from now on a crash makes it ``interrupted``."""
        self._writer.call(lambda t: command_rows.start(t, command_id))

    def finish_command(
        self, command_id: str, status: str, error: str | None, outcome: Event
    ) -> None:
        """Mark it done and store its outcome event, in one commit."""
        self._writer.call(lambda t: command_rows.finish(t, command_id, status, error, outcome))

    def running_commands(self) -> list[Command]:
        """Commands that were running when the previous agent stopped (or died)."""
        return self._read(reads.running_commands)

    def next_command(self) -> Command | None:
        """The oldest queued command, if any."""
        return self._read(reads.next_command)

    def command_state(self, command_id: str) -> tuple[str, str | None, str | None] | None:
        """(state, status, error) of a command, None if this spool never saw it."""
        return self._read(lambda c: reads.command_state(c, command_id))

    # ---------------------------------------------------------------- dead letters

    def dead_letters(self, sink: str | None = None, ids: Sequence[str] = ()) -> list[DeadLetter]:
        return self._read(lambda c: reads.dead_letters(c, sink, ids))

    def redeliver(self, sink: str | None = None, ids: Sequence[str] = ()) -> int:
        """Queue dead letters again, each for its own sink only; returns how many."""
        return self._writer.call(lambda t: t.redeliver(sink, ids))

    def purge(self, sink: str | None = None, ids: Sequence[str] = ()) -> int:
        """Delete dead letters for good; returns how many."""
        return self._writer.call(lambda t: t.purge(sink, ids))

    # ---------------------------------------------------------------- the MQTT broker

    def broker_drops(self) -> BrokerDrops | None:
        """What relay saw of its broker dropping messages (None: never watched one)."""
        return self._read(reads.broker_drops)

    def note_broker_drops(self, drops: BrokerDrops) -> None:
        """Keep ``drops`` for ``relay status``; returns at once. A status, not an event: it
        is committed without an fsync of its own."""
        self._writer.note(lambda t: t.note_broker_drops(drops))

    # ---------------------------------------------------------------- observing

    @property
    def version(self) -> int:
        """A number that changes whenever new work may have arrived."""
        return self._changes.version

    def wait_for_change(self, version: int, timeout: float | None) -> int:
        """Sleep until :attr:`version` differs from ``version``, the timeout, or close."""
        return self._changes.wait(version, timeout)

    def wait_for_command(self, version: int, timeout: float | None) -> int:
        """As :meth:`wait_for_change`, for newly recorded commands only."""
        return self._changes.wait_for_command(version, timeout)

    @property
    def commands_version(self) -> int:
        return self._changes.commands_version

    def notify(self) -> None:
        """Wake everything waiting for work (say, another process wrote to the file)."""
        self._changes.notify()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of :attr:`version`, until the returned
        function is called (which unsubscribes; calling it again does nothing).

        For waiters that cannot block in :meth:`wait_for_change` (a sink whose connection
        needs its thread). ``callback`` runs on the notifying thread (often the writer's),
        outside the spool's locks: it must be quick and must not block or call the spool.
        """
        return self._changes.subscribe(callback)

    def stats(self) -> SpoolStats:
        return self._read(
            lambda c: reads.spool_stats(
                c,
                path=str(self.path or ":memory:"),
                durability=self.durability,
                max_bytes=self.max_bytes,
                unsettled=self._unsettled.copy(),
            )
        )

    def newcomers(self, names: Sequence[str]) -> list[SinkStats]:
        """Statistics of the sinks in ``names`` the file does not know yet, as they will start
        once the agent registers them (``relay status`` before the agent has run)."""
        return self._read(lambda c: reads.newcomers(c, names))

    def tallies(self) -> Tallies:
        """Events stored, and refused at the door, since the file was created, by source."""
        return self._read(reads.tallies)

    # ---------------------------------------------------------------- the writer's side

    def _check_open(self) -> None:
        if self.closed:
            raise SpoolClosed("the spool is closed")

    def _read(self, read: Callable[[sqlite3.Connection], R]) -> R:
        """``read`` on the reader connection, under its lock; ``SpoolClosed`` if closed."""
        with self._rlock:
            self._check_open()
            return read(self._rconn)

    def _new_txn(self, c: sqlite3.Cursor) -> Txn:
        now, known = time.time(), self._known
        return Txn(c, max_bytes=self.max_bytes, when_full=self.when_full, now=now, known=known)

    def _on_committed(self, txn: Txn) -> None:
        self._known = txn.figures.known()
        # A storm of drops is one line a minute.
        if txn.dropped and time.monotonic() - self._last_drop_log > 60:
            self._last_drop_log = time.monotonic()
            log.warning(
                'spool full: dropped the %d oldest entries (when_full = "drop_oldest");'
                " relay status counts every drop",
                txn.dropped,
            )
        if txn.wakes:
            self._changes.notify()
        elif txn.commands_added:
            self._changes.notify_commands()
