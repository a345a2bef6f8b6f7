"""The ``Spool`` object: the thread-safe front of the spool file, and its writer thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from relay.errors import SpoolClosed, SpoolError
from relay.event import Command, Event
from relay.spool import commands, file
from relay.spool.model import (
    DeadLetter,
    Done,
    Durability,
    Lease,
    Record,
    SinkStats,
    SpoolStats,
    WhenFull,
)
from relay.spool.txn import PENDING, Txn, dl_filter

log = logging.getLogger("relay.spool")

T = TypeVar("T")
_BATCH_OPS = 1024  # most operations one commit takes
_QUEUE_OPS = 8192  # bound on operations waiting for the writer
_STOP = object()


class _Op(Generic[T]):
    """One queued write. A blocking caller waits on ``lock``, which the writer releases."""

    __slots__ = ("apply", "callback", "error", "finished", "lock", "result")

    def __init__(self, apply: Callable[[Txn], T], callback: Done | None = None) -> None:
        self.apply = apply
        self.callback = callback
        self.result: T | None = None
        self.error: SpoolError | None = None
        self.finished = False
        # The cheapest wait CPython has: a plain lock, taken now, released by the writer.
        self.lock: threading.Lock | None = None
        if callback is None:
            self.lock = threading.Lock()
            self.lock.acquire()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.callback is not None:
            self.callback(self.error)
        elif self.lock is not None:
            self.lock.release()


def _ignore(error: SpoolError | None) -> None:
    """For writes nobody waits for: the writer has logged any failure already."""


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
    ) -> None:
        self.path = path
        self.durability = durability
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._conn = conn  # the writer thread's
        self._lock = threading.Lock()  # guards it
        # Reads (lease, stats) use their own connection, so that a forwarder leasing its
        # next event does not wait for the writer's fsync (WAL lets readers run during a
        # commit). An in-memory database has only the one connection.
        self._rconn = reader or conn
        self._rlock = threading.Lock() if reader is not None else self._lock
        self._ops: queue.Queue[_Op[Any] | object] = queue.Queue(_QUEUE_OPS)
        self._closed = False
        self._submit_lock = threading.Lock()  # orders submissions against close()
        self._changed = threading.Condition()
        self._version = 0
        # Commands have a wake-up of their own: the executor must not wake for every event.
        self._commands_changed = threading.Condition()
        self._commands_version = 0
        self._listeners: dict[object, Callable[[], None]] = {}  # replaced, never mutated
        self._last_drop_log = float("-inf")
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        durability: Durability = "full",
        max_bytes: int = 256_000_000,
        when_full: WhenFull = "reject",
        check: bool = False,
    ) -> Spool:
        """Open (creating if needed) ``<state_dir>/spool.db``; ``SpoolError`` if it cannot.

        ``check`` (the agent sets it) runs ``PRAGMA quick_check`` and moves a corrupt file
        aside, so that a damaged file never becomes a crash loop.
        """
        if durability == "memory":
            log.warning('spool durability is "memory": queued events are lost when relay stops')
            conn = file.open_memory()
            return cls(
                conn, path=None, durability=durability, max_bytes=max_bytes, when_full=when_full
            )
        path = state_dir / "spool.db"
        conn = file.open_file(path, durability, check=check)
        return cls(
            conn,
            reader=file.open_reader(path),
            path=path,
            durability=durability,
            max_bytes=max_bytes,
            when_full=when_full,
        )

    def close(self) -> None:
        """Finish the queued writes, stop the writer and close the file. Idempotent."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._ops.put(_STOP)
        for cond in (self._changed, self._commands_changed):
            with cond:
                cond.notify_all()
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
        return self._closed

    # ---------------------------------------------------------------- producers

    def put(self, event: Event) -> None:
        """Store one event; returns once it is committed. Raises ``SpoolFull``/``SpoolError``."""
        self._call(lambda t: t.insert((event,)))

    def put_many(self, events: Sequence[Event]) -> None:
        """Store events in this order, in one commit; returns once it is committed."""
        self._call(lambda t: t.insert(events))

    def put_async(self, events: Sequence[Event], done: Done) -> None:
        """Queue events for the next commit and return at once.

        ``done(None)`` is called on the writer thread after the commit that stored them, or
        ``done(error)`` if they were not stored. ``done`` must be quick and must not call the
        spool's blocking methods: it runs on the thread that would serve them.
        """
        self._submit(_Op(lambda t: t.insert(events), done))

    def reject_async(self, sink: str, event: Event, reason: str, done: Done) -> None:
        """Store ``event`` straight into ``sink``'s dead letters, with ``reason``.

        For input refused at the door (a message too large, a topic that is not UTF-8):
        kept where ``relay dlq list`` shows it, never forwarded. ``done`` as for put_async.
        """
        self._submit(_Op(lambda t: t.reject(sink, event, reason), done))

    def sync(self) -> None:
        """Return once every write queued before this call is committed and reported."""
        self._call(lambda t: None)

    # ---------------------------------------------------------------- sinks

    def register_sinks(self, names: Iterable[str]) -> None:
        """Make the spool's sinks exactly ``names``.

        A sink new to this file starts after the newest event (it does not replay history),
        except the first sinks ever registered, which take what producers already queued. A
        sink no longer named is forgotten, with a warning saying what it had not received.
        """
        names = list(names)
        self._call(lambda t: t.register(names))

    def lease(self, sink: str, limit: int = 1, *, after: int = 0) -> Lease:
        """The first ``limit`` events after ``sink``'s cursor, oldest first (maybe none).

        ``after``: a seq the caller has acked without waiting for the commit; the lease
        starts past it even if that ack is not in the file yet.
        """
        with self._rlock:
            self._check_open()
            row = self._rconn.execute(
                "SELECT cursor, head_seq, attempts, failures FROM sinks WHERE name=?", (sink,)
            ).fetchone()
            if row is None:
                raise SpoolError(f"unknown sink {sink!r}")
            cursor, head_seq, attempts, failures = row
            cursor = max(cursor, after)
            rows = self._rconn.execute(
                f"SELECT seq, body, spooled_at {PENDING} ORDER BY seq LIMIT ?",
                (cursor, sink, limit),
            ).fetchall()
        records = []
        for seq, body, spooled_at in rows:
            try:
                records.append(Record(seq, Event.from_json(body), spooled_at))
            except ValueError:
                if records:
                    break  # lease what is good; the bad row is the next head
                # Only damage that passed quick_check gets here; it must not wedge the sink.
                log.error(
                    "sink %s: spool row %d is not a valid event: dead-lettering it", sink, seq
                )
                self.dead_letter(sink, seq, "spool row is not a valid event")
                return self.lease(sink, limit, after=after)
        if not records or records[0].seq != head_seq:
            attempts = failures = 0  # the counters were about an earlier head
        return Lease(sink, records, attempts, failures)

    def ack(self, sink: str, upto_seq: int, *, wait: bool = True) -> None:
        """Mark ``sink``'s events up to ``upto_seq`` delivered.

        With ``wait`` it returns once committed. Without, it returns at once: the caller
        leases with ``after=upto_seq`` meanwhile. An ack lost to a crash only means those
        events are sent again, which at-least-once allows.
        """
        if wait:
            self._call(lambda t: t.ack(sink, upto_seq))
        else:
            self._submit(_Op(lambda t: t.ack(sink, upto_seq), _ignore))

    def retry(self, sink: str, seq: int, error: str, *, permanent: bool) -> tuple[int, int]:
        """Record a failed attempt at ``sink``'s head ``seq``; returns (attempts, failures)."""
        return self._call(lambda t: t.retry(sink, seq, error, permanent))

    def dead_letter(self, sink: str, seq: int, reason: str) -> None:
        """Move ``sink``'s head ``seq`` to its dead letters with ``reason``, and go past it."""
        self._call(lambda t: t.dead_letter(sink, seq, reason))

    # ---------------------------------------------------------------- device commands

    def record_command(self, cmd: Command) -> bool:
        """Queue a device command once committed; False if its id was seen before."""
        return self._call(lambda t: commands.record(t, cmd))

    def record_command_async(
        self, cmd: Command, done: Callable[[bool | None, SpoolError | None], None]
    ) -> None:
        """As :meth:`record_command`, reporting ``done(recorded, error)`` after the commit
        (on the writer thread: ``done`` must be quick and must not call the spool)."""
        op: _Op[bool] = _Op(lambda t: commands.record(t, cmd), lambda e: done(op.result, e))
        self._submit(op)

    def start_command(self, command_id: str) -> None:
        """Mark it running, committed: from now on a crash makes it ``interrupted``."""
        self._call(lambda t: commands.start(t, command_id))

    def finish_command(
        self, command_id: str, status: str, error: str | None, outcome: Event
    ) -> None:
        """Mark it done and store its outcome event, in one commit."""
        self._call(lambda t: commands.finish(t, command_id, status, error, outcome))

    def running_commands(self) -> list[Command]:
        """Commands that were running when the previous agent stopped (or died)."""
        with self._rlock:
            self._check_open()
            return commands.running(self._rconn)

    def next_command(self) -> Command | None:
        """The oldest queued command, if any."""
        with self._rlock:
            self._check_open()
            return commands.next_queued(self._rconn)

    def command_state(self, command_id: str) -> tuple[str, str | None, str | None] | None:
        """(state, status, error) of a command, None if this spool never saw it."""
        with self._rlock:
            self._check_open()
            return commands.state(self._rconn, command_id)

    # ---------------------------------------------------------------- dead letters

    def dead_letters(self, sink: str | None = None, ids: Sequence[str] = ()) -> list[DeadLetter]:
        where, args = dl_filter(sink, ids)
        with self._rlock:
            self._check_open()
            rows = self._rconn.execute(
                "SELECT sink, seq, id, body, reason, attempts, dead_at FROM dead_letters"
                f"{where} ORDER BY sink, seq",
                args,
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def redeliver(self, sink: str | None = None, ids: Sequence[str] = ()) -> int:
        """Queue dead letters again, each for its own sink only; returns how many."""
        return self._call(lambda t: t.redeliver(sink, ids))

    def purge(self, sink: str | None = None, ids: Sequence[str] = ()) -> int:
        """Delete dead letters for good; returns how many."""
        return self._call(lambda t: t.purge(sink, ids))

    # ---------------------------------------------------------------- observing

    @property
    def version(self) -> int:
        """A number that changes whenever new work may have arrived."""
        with self._changed:
            return self._version

    def wait_for_change(self, version: int, timeout: float | None) -> int:
        """Sleep until :attr:`version` differs from ``version``, the timeout, or close."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._closed, timeout)
            return self._version

    def wait_for_command(self, version: int, timeout: float | None) -> int:
        """As :meth:`wait_for_change`, for newly recorded commands only."""
        with self._commands_changed:
            self._commands_changed.wait_for(
                lambda: self._commands_version != version or self._closed, timeout
            )
            return self._commands_version

    @property
    def commands_version(self) -> int:
        with self._commands_changed:
            return self._commands_version

    def _notify_commands(self) -> None:
        with self._commands_changed:
            self._commands_version += 1
            self._commands_changed.notify_all()

    def notify(self) -> None:
        """Wake everything waiting for work (say, another process wrote to the file)."""
        self._notify_commands()
        with self._changed:
            self._version += 1
            self._changed.notify_all()
            listeners = self._listeners
        for callback in listeners.values():  # outside the lock: a callback may read version
            callback()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of :attr:`version`, until the returned
        function is called (which unsubscribes; calling it again does nothing).

        For waiters that cannot block in :meth:`wait_for_change` (a sink whose connection
        needs its thread). ``callback`` runs on the notifying thread (often the writer's),
        outside the spool's locks: it must be quick and must not block or call the spool.
        """
        key = object()
        with self._changed:
            self._listeners = {**self._listeners, key: callback}

        def unsubscribe() -> None:
            with self._changed:
                self._listeners = {k: v for k, v in self._listeners.items() if k is not key}

        return unsubscribe

    def stats(self) -> SpoolStats:
        with self._rlock:
            self._check_open()
            c = self._rconn
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            rows = c.execute("SELECT count(*) FROM events").fetchone()[0]
            sinks = [
                self._sink_stats(row)
                for row in c.execute(
                    "SELECT name, cursor, head_seq, attempts, last_error, last_error_at, "
                    "delivered FROM sinks ORDER BY name"
                ).fetchall()
            ]
        return SpoolStats(
            str(self.path or ":memory:"),
            self.durability,
            meta["bytes"],
            self.max_bytes,
            rows,
            meta["dropped"],
            sinks,
        )

    def _sink_stats(self, row: tuple[Any, ...]) -> SinkStats:
        name, cursor, head_seq, attempts, last_error, last_error_at, delivered = row
        c = self._rconn
        depth = c.execute(f"SELECT count(*) {PENDING}", (cursor, name)).fetchone()[0]
        head = c.execute(
            f"SELECT seq, spooled_at {PENDING} ORDER BY seq LIMIT 1", (cursor, name)
        ).fetchone()
        dead = c.execute("SELECT count(*) FROM dead_letters WHERE sink=?", (name,)).fetchone()[0]
        on_head = head is not None and head[0] == head_seq
        return SinkStats(
            name, depth, head[1] if head else None, attempts if on_head else 0,
            last_error, last_error_at, delivered, dead,
        )  # fmt: skip

    # ---------------------------------------------------------------- the writer

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolClosed("the spool is closed")

    def _submit(self, op: _Op[Any]) -> None:
        # Under the lock, so that nothing is queued behind the stop marker, never answered.
        with self._submit_lock:
            self._check_open()
            self._ops.put(op)

    def _call(self, apply: Callable[[Txn], T]) -> T:
        op = _Op(apply)
        self._submit(op)
        assert op.lock is not None
        op.lock.acquire()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    def _write_loop(self) -> None:
        while True:
            item = self._ops.get()
            batch: list[_Op[Any]] = []
            while item is not _STOP:
                assert isinstance(item, _Op)
                batch.append(item)
                if len(batch) >= _BATCH_OPS:
                    break
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._commit(batch)
                except Exception as exc:  # the thread's top: a bug must not hang every caller
                    log.exception("spool writer failed")
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    for op in batch:
                        op.error, op.result = SpoolError(f"spool writer failed: {exc!r}"), None
                        op.finish()
            if item is _STOP:
                return

    def _commit(self, batch: list[_Op[Any]]) -> None:
        txn: Txn | None = None
        with self._lock:
            c = self._conn.cursor()
            try:
                c.execute("BEGIN IMMEDIATE")
                txn = Txn(c, max_bytes=self.max_bytes, when_full=self.when_full, now=time.time())
                for op in batch:
                    try:
                        op.result = op.apply(txn)
                    except SpoolError as exc:  # this one is refused; the others go on
                        op.error = exc
                txn.finish()
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                error = SpoolError(f"spool write failed: {exc}")
                log.error("%s (%d operations not done)", error, len(batch))
                for op in batch:
                    op.error, op.result = error, None
                txn = None
        for op in batch:
            op.finish()
        if txn is not None:
            if txn.dropped:
                self._log_drops(txn.dropped)
            if txn.wakes:
                self.notify()
            elif txn.commands_added:
                self._notify_commands()

    def _log_drops(self, dropped: int) -> None:
        if time.monotonic() - self._last_drop_log > 60:  # a storm of drops is one line a minute
            self._last_drop_log = time.monotonic()
            log.warning(
                'spool full: dropped the %d oldest entries (when_full = "drop_oldest");'
                " relay status counts every drop",
                dropped,
            )
