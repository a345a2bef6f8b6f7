"""The spool's writer thread: the one thread that writes the file, with group commit.

Every write is an operation, a function of a :class:`~relay.spool.txn.Txn`, queued on a
bounded queue. The thread takes what is queued (up to ``_BATCH_OPS``), applies it all in one
transaction and commits; only then does it report each operation done, so that no caller hears
"stored" before the commit that stored it has returned. An operation the ``Txn`` refuses
(``SpoolError``) fails alone and its neighbours go on; a failed commit fails the whole batch.

Two kinds of operation:

- a *durable* write (:meth:`Writer.call`, :meth:`Writer.submit`: events, dead letters,
  commands) is committed with the configured ``synchronous`` level: with "full", fsync'd
  before anyone hears of it;
- an *ack* (:meth:`Writer.ack`: a sink's cursor moving on) need not survive a power cut,
  since losing it only means its events are sent again, which at-least-once allows. A batch
  of nothing but acks is committed with ``synchronous=NORMAL``, without an fsync (it becomes
  durable with the next fsync'd commit or checkpoint, as WAL frames are written in order). And
  an ack waits up to ``ack_delay`` for company before it commits: a sink makes one commit of
  acks a second at most, not one per event, draining or at a trickle (this process reads its
  own acks from memory meanwhile: ``relay.spool.overlay``), or one per ``ACK_OPS`` acks in
  a fast drain, so that a crash re-sends no more than those.

With a ``commit_interval`` (the SD card's friend), a durable write whose producer waits by
callback (an MQTT message, acknowledged to the broker after the commit) may also wait up to
that long for company, so that one commit and one fsync cover several; the wait ends early
once ``WINDOW_OPS`` such writes wait, since the broker sends only so many unacknowledged
messages at once (Mosquitto: 20), and at once when anyone calls and waits. Nobody hears
"stored" before the commit either way.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relay import crashpoints
from relay.errors import SpoolClosed, SpoolError
from relay.logonce import LogOnce
from relay.spool.file import keep_wal_small
from relay.spool.inbox import Inbox
from relay.spool.txn import Txn
from relay.spool.wear import WearMeter

log = logging.getLogger("relay.spool")

T = TypeVar("T")
# Called on the writer thread once the operation's commit returned: (result, None), or
# (None, error) if the operation did not happen.
Reply = Callable[[T | None, SpoolError | None], None]

_BATCH_OPS = 1024  # most operations one commit takes
ACK_DELAY_S = 1.0  # how long acks may gather by default (a kill re-sends theirs)
WINDOW_OPS = 16  # writes in a commit window that close it (the broker's 20 in flight, less)
ACK_OPS = 64  # acks waiting that end their wait: what a crash in a fast drain re-sends
_QUEUE_OPS = 8192  # bound on operations waiting for the writer


@dataclass(frozen=True)
class Pace:
    """How the writer paces its commits (see the module): how long acks gather, how long a
    write in the commit window may wait; ``wear`` measures the bytes written per event."""

    ack_delay: float = ACK_DELAY_S
    commit_interval: float = 0.0
    wear: WearMeter | None = None


AS_SOON_AS_SAFE = Pace()  # the default: acks gather a second, events commit at once


_STOP = object()


class _Op(Generic[T]):
    """One queued write. A blocking caller waits on ``lock``, which the writer releases."""

    __slots__ = (
        "apply", "error", "finished", "gather", "lock", "relaxed", "reply", "result", "window"
    )  # fmt: skip

    def __init__(
        self,
        apply: Callable[[Txn], T],
        reply: Reply[T] | None = None,
        *,
        relaxed: bool = False,
        gather: bool = False,
        window: bool = False,
    ) -> None:
        self.apply = apply
        self.reply = reply
        self.relaxed = relaxed  # no fsync of its own (see the module)
        self.gather = gather  # an ack: may wait for company
        self.window = window  # a durable write that may wait in the commit window
        self.result: T | None = None
        self.error: SpoolError | None = None
        self.finished = False
        # The cheapest wait CPython has: a plain lock, taken now, released by the writer.
        self.lock: threading.Lock | None = None
        if reply is None:
            self.lock = threading.Lock()
            self.lock.acquire()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.reply is not None:
            self.reply(self.result, self.error)
        elif self.lock is not None:
            self.lock.release()


def _ignore(result: object, error: SpoolError | None) -> None:
    """For acks nobody listens for: the writer logs a failed commit once already."""


class Writer:
    """Owns the writes to ``conn`` (guarded by ``lock``) and the thread that makes them.

    ``txn_factory(cursor)`` makes the ``Txn`` of each commit; ``on_committed(txn)`` runs on
    the writer thread after a commit succeeded and its operations were reported; ``pace``
    says how long writes may wait for company.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        txn_factory: Callable[[sqlite3.Cursor], Txn],
        on_committed: Callable[[Txn], None],
        pace: Pace = AS_SOON_AS_SAFE,
    ) -> None:
        self._conn = conn
        self._ack_delay = pace.ack_delay
        self._commit_interval = pace.commit_interval
        self._wear = pace.wear
        self._stored = 0  # events this process stored, for the wear figure
        self._lock = lock
        self._txn_factory = txn_factory
        self._on_committed = on_committed
        self._ops: Inbox[_Op[Any] | object] = Inbox(_QUEUE_OPS)
        self._closed = False
        self._submit_lock = threading.Lock()  # orders submissions against stop()
        self._acks = 0  # acks submitted so far
        self._failing = LogOnce()  # commits fail (a full disk): logged once, not per flap
        self._reclaim = False  # the disk was full: truncate the WAL after the next commit
        self._path = conn.execute("PRAGMA database_list").fetchone()[2] or ":memory:"
        self._synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])  # as set
        self._relaxed = False  # synchronous is NORMAL now, for a batch of relaxed operations
        self._thread = threading.Thread(target=self._loop, name="spool-writer", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`stop` was called: nothing more is accepted."""
        return self._closed

    def call(self, apply: Callable[[Txn], T]) -> T:
        """A durable write: ``apply``'s result once its commit returned; raises its
        ``SpoolError``, or ``SpoolClosed`` if the writer is stopped. Blocks while the queue
        is full."""
        return self._wait(_Op(apply))

    def submit(self, apply: Callable[[Txn], T], reply: Reply[T], *, window: bool = False) -> None:
        """A durable write, queued: returns at once, and ``reply`` reports it after the
        commit (quick, and never calling the spool: it runs on the thread that would serve
        the call). ``window``: it may wait in the commit window (see the module)."""
        self._submit(_Op(apply, reply, window=window))

    def ack(self, apply: Callable[[Txn], T], reply: Reply[T] = _ignore) -> None:
        """An ack, queued: no fsync of its own, and it may wait up to ``ack_delay`` for
        other writes to share its commit; ``reply`` as for :meth:`submit`."""
        self._submit(_Op(apply, reply, relaxed=True, gather=True))

    def note(self, apply: Callable[[Txn], object]) -> None:
        """A figure for other processes to read (``relay status``), queued: no fsync of its
        own, committed without waiting for company."""
        self._submit(_Op(apply, _ignore, relaxed=True))

    def sync(self) -> None:
        """Return once every write queued before this call is committed and reported; acks
        waiting for company are committed now. Adds nothing that needs an fsync."""
        self._wait(_Op(lambda t: None, relaxed=True))

    def _wait(self, op: _Op[T]) -> T:
        self._submit(op)
        assert op.lock is not None
        op.lock.acquire()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    def stop(self) -> bool:
        """Refuse new operations and queue the stop behind those queued, which still commit.
        Returns False if it was stopped already."""
        with self._submit_lock:
            if self._closed:
                return False
            self._closed = True
            self._ops.put(_STOP)
        return True

    def join(self) -> None:
        """Wait until the operations queued before :meth:`stop` are done."""
        self._thread.join()

    def _submit(self, op: _Op[Any]) -> None:
        # Under the lock, so that nothing is queued behind the stop marker, never answered.
        with self._submit_lock:
            if self._closed:
                raise SpoolClosed("the spool is closed")
            urgent = True
            if op.gather:  # an ack waits for its deadline, or for ACK_OPS of them
                self._acks += 1
                urgent = self._acks % ACK_OPS == 0
            self._ops.put(op, urgent=urgent)

    def _loop(self) -> None:
        while True:
            items = self._gather(self._ops.take(_BATCH_OPS))
            stop = items[-1] is _STOP  # nothing is queued behind it (see _submit)
            batch = [op for op in items if isinstance(op, _Op)]
            if batch:
                try:
                    self._commit(batch)
                except Exception as exc:  # the thread's top: a bug must not hang every caller
                    log.exception("spool writer failed")
                    self._fail(batch, exc)
            if stop:
                return

    def _gather(self, items: list[_Op[Any] | object]) -> list[_Op[Any] | object]:
        """``items``, and what comes while everything taken may wait: acks up to
        ``ack_delay`` (and no more than ``ACK_OPS`` of them), writes in the commit window up
        to ``commit_interval`` (and no more than ``WINDOW_OPS`` of them)."""
        now = time.monotonic()
        deadline = {"ack": now + self._ack_delay, "window": now + self._commit_interval}
        more = items
        while len(items) < _BATCH_OPS:
            kinds = {self._may_wait(op) for op in more}
            if None in kinds:
                break  # someone waits, or a write that may not: commit now
            windowed = sum(1 for op in items if isinstance(op, _Op) and op.window)
            acks = sum(1 for op in items if isinstance(op, _Op) and op.gather)
            if windowed >= WINDOW_OPS or acks >= ACK_OPS:
                break
            waiting = {self._may_wait(op) for op in items}
            left = min(deadline[k] for k in waiting if k is not None) - time.monotonic()
            more = self._ops.take(_BATCH_OPS - len(items), left) if left > 0 else []
            if not more:
                break
            items += more
        return items

    def _may_wait(self, op: _Op[Any] | object) -> str | None:
        """What kind of wait ``op`` allows ("ack", "window"), or None: none."""
        if not isinstance(op, _Op):
            return None  # the stop marker
        if op.gather:
            return "ack"
        if op.window and self._commit_interval > 0:
            return "window"
        return None

    def _fail(self, batch: list[_Op[Any]], exc: Exception) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        error = SpoolError(f"spool writer failed: {exc!r}")
        for op in batch:
            if not op.finished:  # one already reported keeps its answer: its caller may read it
                op.error, op.result = error, None
                op.finish()

    def _commit(self, batch: list[_Op[Any]]) -> None:
        txn: Txn | None = None
        with self._lock:
            c = self._conn.cursor()
            try:
                relaxed = all(op.relaxed for op in batch)
                self._set_relaxed(relaxed)
                c.execute("BEGIN IMMEDIATE")
                txn = self._txn_factory(c)
                txn.fold = relaxed  # a commit of acks writes other pages than events' anyway
                for op in batch:
                    try:
                        op.result = op.apply(txn)
                    except SpoolError as exc:  # this one is refused; the others go on
                        op.error = exc
                if relaxed and self._wear is not None and self._wear.due():
                    txn.note_wear(self._wear.sample(self._stored))
                txn.finish()
                crashpoints.crash("before_commit")
                c.execute("COMMIT")
                crashpoints.crash("after_commit")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                error = self._failed(exc, batch)
                for op in batch:
                    op.error, op.result = error, None
                txn = None
        for op in batch:
            op.finish()
        if txn is not None:
            self._stored += txn.inserted
            if self._failing.succeeded():
                log.info("spool writes succeed again (%s)", self._path)
            if self._reclaim:
                self._reclaim = not self._checkpoint()
            self._on_committed(txn)

    def _set_relaxed(self, relaxed: bool) -> None:
        """NORMAL for a batch of relaxed operations, the configured level for any other
        (SQLite takes the change only between transactions). Under the writer's lock."""
        relaxed = relaxed and self._synchronous > 1  # already NORMAL or OFF: nothing to relax
        if relaxed != self._relaxed:
            level = 1 if relaxed else self._synchronous
            self._conn.execute(f"PRAGMA synchronous={level}")
            self._relaxed = relaxed

    def _failed(self, exc: sqlite3.Error, batch: list[_Op[Any]]) -> SpoolError:
        """The error a failed commit gives its operations; logged once per outage, and only
        when someone does not wait for it (a waiting caller gets it raised and reports it:
        ``relay push`` on a full disk prints one line, not two). Under the writer's lock."""
        full = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
        why = f"no space left on the disk holding {self._path} ({exc})" if full else str(exc)
        error = SpoolError(f"spool write failed: {why}")
        if full:
            # The WAL may be what fills the disk (see file.LOW_SPACE), and its pages cannot
            # be copied into a database file that would have to grow: keep it small from
            # now on, and cut it to zero, now if the database has free pages, else after
            # the first commit that succeeds once some space is back (before the WAL eats
            # the freed space again).
            with contextlib.suppress(sqlite3.Error):
                keep_wal_small(self._conn)
            self._reclaim = not self._checkpoint()
        if any(op.reply is not None for op in batch) and self._failing.failed(str(error)):
            log.error("%s (%d operations not done; logged once per outage)", error, len(batch))
        return error

    def _checkpoint(self) -> bool:
        """Move the WAL into the database and truncate it; False if that did not happen."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        return int(busy) == 0
