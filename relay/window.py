"""Sends under way at once, for a sink that takes more than one (the HTTP sink's
``max_in_flight``): the :class:`WindowedForwarder`, and its :class:`Window` of what it has
sent and not yet settled, oldest first.

The forwarder leases the events after the last ones in flight and hands each batch to
:meth:`Window.start`; a pool of threads, one per send under way, calls the sink (which must
take sends from several threads: the HTTP sink gives each its own connection). A send's
outcome stays in its :class:`Flight` until the forwarder settles it, oldest first, so that
the spool's cursor moves over a contiguous run of delivered events and never past one that
failed. A finished send wakes the forwarder, which sleeps here (:meth:`Window.wait`) rather
than on the spool.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from relay import crashpoints
from relay.errors import SendError
from relay.forwarder import Forwarder, Policy, Queue, Step
from relay.metrics import NO_METRICS, Metrics
from relay.sinks import Position, WindowedSink
from relay.spool import Record


class Flight:
    """One send: its events, where they stand, and once ``done``, how it went."""

    __slots__ = ("answered", "done", "error", "position", "records", "started")

    def __init__(self, records: Sequence[Record], previous: int) -> None:
        self.records = list(records)
        self.position = Position(tuple(r.seq for r in records), previous)
        self.started = 0.0  # monotonic: when the send began
        self.answered = 0.0  # monotonic: when it returned or raised
        self.error: BaseException | None = None  # a SendError, or a bug in the sink
        self.done = False

    @property
    def first(self) -> int:
        return self.records[0].seq

    @property
    def last(self) -> int:
        return self.records[-1].seq


class Window:
    """Up to ``size`` flights; ``send(flight)`` runs on the pool and raises what the sink
    raised. The forwarder's thread alone starts, reads and pops flights."""

    def __init__(
        self,
        size: int,
        send: Callable[[Flight], None],
        *,
        name: str,
        clock: Callable[[], float],
    ) -> None:
        self.size = size
        self.flights: deque[Flight] = deque()
        self.completed = 0  # sends finished so far: part of the forwarder's version
        self._send = send
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"send-{name}")
        self._cond = threading.Condition()
        self._woken = False

    def room(self) -> bool:
        return len(self.flights) < self.size

    def flying(self) -> bool:
        """Whether a send is under way."""
        return any(not f.done for f in self.flights)

    def first_failed(self) -> int | None:
        """Where the first finished send that failed is (the forwarder sends nothing beyond
        it until it has handled it), or None."""
        for i, f in enumerate(self.flights):
            if f.done and f.error is not None:
                return i
        return None

    def gap(self, cursor: int) -> tuple[int, int]:
        """Where the first events not in flight go: (index among the flights, the seq they
        follow), the sink's queue starting after ``cursor``. Flights follow each other
        unless one failed and left (the head, sent again) or some of its events did."""
        expected = cursor
        for i, f in enumerate(self.flights):
            if f.position.previous != expected:
                return i, expected
            expected = f.last
        return len(self.flights), expected

    def start(self, records: Sequence[Record], previous: int, *, at: int) -> None:
        """Send ``records`` (``previous``: the seq before the first), placed at ``at``."""
        flight = Flight(records, previous)
        self.flights.insert(at, flight)
        self._pool.submit(self._run, flight)

    def _run(self, flight: Flight) -> None:
        flight.started = self._clock()
        try:
            self._send(flight)
        except BaseException as exc:  # noqa: BLE001 - the forwarder's thread raises a bug
            flight.error = exc
        flight.answered = self._clock()
        with self._cond:
            flight.done = True
            self.completed += 1
            self._woken = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- the forwarder's sleep

    def wait(self, timeout: float | None) -> None:
        """Until a send finishes, :meth:`wake`, or ``timeout``; a wake that came while nobody
        waited ends the next wait at once."""
        with self._cond:
            if not self._woken:
                self._cond.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for the sends under way (each is bounded by the sink's timeout)."""
        self._pool.shutdown(wait=True)


class WindowedForwarder(Forwarder):
    """A :class:`~relay.forwarder.Forwarder` with up to ``policy.max_in_flight`` sends under
    way. Failures are handled as the forwarder handles a failed head (retry counts, backoff,
    Retry-After, halving, dead letters), once the failed send is the oldest."""

    def __init__(
        self,
        sink: WindowedSink,
        spool: Queue,
        policy: Policy,
        *,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        super().__init__(sink, spool, policy, rng=rng, wall=wall, clock=clock, metrics=metrics)
        self._windowed = sink
        self._window = Window(policy.max_in_flight, self._send_flight, name=self.name, clock=clock)
        self._waiter = self._window  # it sleeps there: a finished send wakes it
        self._retrying = False  # the head failed and goes again, alone, until it passes
        self._cursor: int | None = None  # the last seq acked, as far as this forwarder knows

    def step(self, now: float) -> Step:
        """Settle what finished at the front, then send what comes next. A failed send
        holds new ones back until it is the front and handled as a failed head is (a
        Retry-After or a backoff holds the whole sink); what got through behind it is not
        sent again."""
        settled = self._settle()
        if settled is Step.RETRY or settled is Step.DEAD:
            return settled
        if now >= self.next_attempt:
            self._dispatch()
        if self._window.flying():
            return Step.FLYING
        if now < self.next_attempt:
            return Step.WAIT
        return settled or Step.IDLE

    def _settle(self) -> Step | None:
        """Ack the finished sends at the front, in order, up to one that failed; that one
        holds the spool's head and is handled as a failed head is."""
        flights, step = self._window.flights, None
        while flights and flights[0].done and flights[0].position.previous == self._cursor:
            flight = flights.popleft()
            if flight.error is None:
                crashpoints.crash("after_send_before_ack")
                self._delivered(flight.records)
                step = Step.SENT
                continue
            if not isinstance(flight.error, SendError):
                raise flight.error  # a bug in the sink: the runner logs it; the head goes again
            self._retrying = True
            return self._failed(flight.records, flight.error, flight.answered, flight.started)
        return step

    def _dispatch(self) -> None:
        """Start sends while there is room: the first events not in flight (the head, if it
        failed; what follows the last send, else). While the head goes again, or a refused
        event is looked for, one send at a time; while a failed send waits to be handled,
        none beyond it."""
        window = self._window
        while window.room():
            serial = self._retrying or self._suspect is not None
            if serial and window.flying():
                return
            crashpoints.wedge("forwarder.send")
            head = self.spool.lease(self.name, 1)
            if not head.records:
                return
            self._cursor = head.cursor
            if self._suspect is not None and head.records[0].seq > self._suspect[1]:
                self._suspect = None
            at, after = window.gap(head.cursor)
            failed = window.first_failed()
            if failed is not None and at > failed:
                return  # the failed one first
            if after == head.cursor:
                records = self._batch(head.records) if self.policy.batch_max > 1 else head.records
            else:
                records = self.spool.lease(self.name, self.policy.batch_max, after=after).records
            until = window.flights[at].first if at < len(window.flights) else None
            records = [r for r in records if until is None or r.seq < until]
            if not records:
                return
            window.start(records, after, at=at)
            if serial:
                return

    def _send_flight(self, flight: Flight) -> None:
        """On the window's pool."""
        with self._metrics.sending(self.name):
            self._windowed.send_at([r.event for r in flight.records], flight.position)

    def _delivered(self, records: list[Record]) -> None:
        super()._delivered(records)
        self._retrying = False

    def _ack(self, seq: int) -> None:
        self._cursor = seq
        super()._ack(seq)

    def _dead(self, head: Record, reason: str) -> Step:
        self._retrying = False
        return super()._dead(head, reason)

    # ---------------------------------------------------------------- the thread

    def version(self) -> int:
        return self.spool.version + self._window.completed

    def sleep(self, version: int, timeout: float | None, stop: threading.Event) -> None:
        if timeout is None:
            super().sleep(version, timeout, stop)
        else:
            self._window.wait(timeout)  # a send that finishes ends it: its ack is due

    def _wind_down(self) -> None:
        """The sends under way finish (each within the sink's timeout), and what they
        delivered in order is acked, so that the next start does not send it again."""
        self._window.close()
        flights = self._window.flights
        while flights and flights[0].done and flights[0].error is None:
            if flights[0].position.previous != self._cursor:
                break
            self._delivered(flights.popleft().records)
