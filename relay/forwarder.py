"""One forwarder per sink: lease the head of the sink's queue, send it, then ack, schedule a
retry, or dead-letter. One send at a time, so events reach each sink in spool order (a sink
with ``max_in_flight`` has several under way: ``relay.window.WindowedForwarder``).

``step(now)`` does one unit of work and says what happened; tests drive it with a fake clock.
Its thread (``relay.runner``) sleeps until new work arrives (the spool wakes it) or the next
retry is due, and never polls on a tick. A sink whose connection needs its thread while idle
(pika's heartbeats) does that sleeping itself: see :class:`WaitingSink`.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from relay import crashpoints
from relay.backoff import Backoff
from relay.errors import PermanentError, SendError, TransientError
from relay.health import SinkHealth
from relay.metrics import NO_METRICS, Metrics
from relay.runner import StepRunner
from relay.sinks import Sink
from relay.spool import Lease, Record

log = logging.getLogger(__name__)


class Step(enum.Enum):
    SENT = "sent"  # a batch was delivered
    RETRY = "retry"  # the head failed; the next attempt is scheduled
    DEAD = "dead"  # the head was dead-lettered
    WAIT = "wait"  # a retry is scheduled and not due yet
    IDLE = "idle"  # nothing to send
    FLYING = "flying"  # sends are under way: the next step when one finishes


class Queue(Protocol):
    """What a forwarder needs of the spool (``relay.spool.Spool``): its sink's queue."""

    @property
    def version(self) -> int: ...

    def lease(self, sink: str, limit: int = 1, *, after: int = 0) -> Lease: ...

    def ack(self, sink: str, upto_seq: int) -> None: ...

    def retry(self, sink: str, seq: int, error: str, *, permanent: bool) -> tuple[int, int]: ...

    def dead_letter(self, sink: str, seq: int, reason: str) -> None: ...

    def wait_for_change(self, version: int, timeout: float | None) -> int: ...

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]: ...

    def notify(self) -> None: ...


@runtime_checkable
class WaitingSink(Protocol):
    """Optional sink methods, for a sink whose connection must be serviced by its own thread
    even while there is nothing to send (pika: heartbeats, a broker's close, blocked/unblocked).

    The forwarder then sleeps in ``wait`` instead of on the spool or its stop event.
    """

    def wait(self, timeout: float | None) -> None:
        """Block until ``timeout`` seconds (None: no limit) have passed or :meth:`wake` is
        called; a wake that came while nobody waited makes the next ``wait`` return at once.
        May return early for no reason: callers re-check what they wait for."""

    def wake(self) -> None:
        """Make the current or next :meth:`wait` return. Thread-safe, quick, never blocks."""


@dataclass(frozen=True)
class Policy:
    """When to give up: what a sink's config says about retries."""

    max_retries: int = 5  # permanent failures of one event beyond the first
    max_age: float | None = None  # seconds in the spool after which transient retries stop
    backoff: Backoff = field(default_factory=Backoff)
    batch_max: int = 1
    max_in_flight: int = 1  # sends under way at once (relay.window.WindowedForwarder)
    stall_s: float = 120.0  # one step taking longer than this means the thread is wedged


class Forwarder:
    is_sink = True

    def __init__(
        self,
        sink: Sink,
        spool: Queue,
        policy: Policy,
        *,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.name = sink.name
        self.sink = sink
        self.spool = spool
        self.policy = policy
        self.next_attempt = float("-inf")  # monotonic time of the next retry
        self.last_error: str | None = None
        self.delivered_at: float | None = None  # wall time of this process's last delivery
        self._reached: bool | None = None  # see connected
        self._rng = rng or random.Random()
        self._wall = wall
        self._clock = clock
        self._metrics = metrics
        # A refused batch holds a refused event: (first, last) seq of the part of it not yet
        # sent on its own half, while the refused one is looked for by halves.
        self._suspect: tuple[int, int] | None = None
        self._health = SinkHealth(self.name, clock)
        self._waiter: WaitingSink | None = sink if isinstance(sink, WaitingSink) else None
        self._runner = StepRunner(
            self,
            name=f"forward-{self.name}",
            what=f"sink {self.name}",
            backoff=policy.backoff,
            stall_s=policy.stall_s,
            extra={"SINK": self.name},
            clock=clock,
            rng=self._rng,
        )

    # ---------------------------------------------------------------- one step

    def step(self, now: float) -> Step:
        """Try the head once if it is due. ``now`` is monotonic seconds."""
        if now < self.next_attempt:
            return Step.WAIT
        head = self.spool.lease(self.name, 1)
        if not head.records:
            return Step.IDLE
        if self._suspect is not None and head.records[0].seq > self._suspect[1]:
            self._suspect = None  # what held the refused event went through after all
        records = self._batch(head.records) if self.policy.batch_max > 1 else head.records
        started = self._clock()
        crashpoints.wedge("forwarder.send")
        try:
            with self._metrics.sending(self.name):
                self.sink.send([r.event for r in records])
        except SendError as exc:
            # A retry is timed from the answer (Retry-After counts from there), not the ask.
            return self._failed(records, exc, now + self._clock() - started, started)
        crashpoints.crash("after_send_before_ack")
        self._delivered(records)
        return Step.SENT

    def _delivered(self, records: list[Record]) -> None:
        self.delivered_at, self._reached = self._wall(), True  # before the ack lands
        self._ack(records[-1].seq)
        self._metrics.delivered(self.name, len(records))
        self.next_attempt = float("-inf")
        self._health.ok()

    def _batch(self, head: list[Record]) -> list[Record]:
        """What to send: up to ``batch_max`` events; while a refused event is looked for,
        the first half of what is left of the refused batch."""
        records = self.spool.lease(self.name, self.policy.batch_max).records or head
        if self._suspect is None:
            return records
        suspects = [r for r in records if r.seq <= self._suspect[1]]
        return suspects[: (len(suspects) + 1) // 2]

    def _failed(self, records: list[Record], exc: SendError, now: float, sent_at: float) -> Step:
        self._reached = isinstance(exc, PermanentError)  # it answered, if only to refuse
        if exc.delivered:  # a windowed sink got the front of the batch through
            self.delivered_at = self._wall()
            self._ack(records[exc.delivered - 1].seq)
            self._metrics.delivered(self.name, exc.delivered)
            records = records[exc.delivered :]
        head, error = records[0], str(exc)
        permanent = isinstance(exc, PermanentError)
        self.last_error = error
        if isinstance(exc, PermanentError) and len(records) > 1 and not exc.exact:
            return self._halve(records, error, sent_at)
        if permanent and self._suspect is not None:
            self._suspect = (head.seq, head.seq)  # found: alone until it is dead-lettered
        attempts, failures = self.spool.retry(self.name, head.seq, error, permanent=permanent)
        if permanent and failures > self.policy.max_retries:
            return self._dead(head, f"{error} (refused {failures} times)")
        age = self._wall() - head.spooled_at
        if not permanent and self.policy.max_age is not None and age > self.policy.max_age:
            return self._dead(head, f"{error} (still failing after {age:.0f}s, max_age)")
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        # A refusal is the far end's answer about this event, not a sign that it is down:
        # its retries do not grow into an outage's waits, which would hold every event
        # behind it for minutes.
        backoff = self.policy.backoff
        if permanent:
            delay = backoff.refused(failures, self._rng)
        else:
            delay = backoff.delay(attempts, self._rng, retry_after)
        self.next_attempt = now + delay
        self._health.failed(error, delay, sent_at=sent_at)
        self._metrics.retried(self.name)
        return Step.RETRY

    def _halve(self, records: list[Record], error: str, sent_at: float) -> Step:
        """A batch was refused, and the sink cannot say which event it refused (an HTTP
        answer is for the whole request): send its first half next, at once; what passes
        is acked, what is refused is halved again. A batch of 100 with one refused event
        costs about 7 more requests, and batching goes on after it."""
        if self._suspect is None:
            log.info(
                "sink %s: a batch of %d was refused (%s): looking for the refused event by halves",
                self.name,
                len(records),
                error,
                extra={"SINK": self.name, "EVENT_ID": records[0].event.id},
            )
        self._suspect = (records[0].seq, records[-1].seq)
        self.next_attempt = float("-inf")
        self._health.failed(error, 0.0, sent_at=sent_at)
        self._metrics.retried(self.name)
        return Step.RETRY

    def _ack(self, seq: int) -> None:
        # The spool commits acks without an fsync, a second's worth together (this process
        # reads them from memory meanwhile); it applies writes in order, so a later retry or
        # dead letter still lands after this ack.
        self.spool.ack(self.name, seq)

    def _dead(self, head: Record, reason: str) -> Step:
        self._suspect = None
        self.spool.dead_letter(self.name, head.seq, reason)
        self._metrics.dead_lettered(self.name)
        log.warning(
            "sink %s: event %s dead-lettered: %s",
            self.name,
            head.event.id,
            reason,
            extra={"SINK": self.name, "EVENT_ID": head.event.id},
        )
        self.next_attempt = float("-inf")
        return Step.DEAD

    @property
    def connected(self) -> bool | None:
        """Whether the sink took (or answered) the last attempt: None before the first one,
        False after a transient failure (down, unreachable, "come back later") until a send
        goes through or is refused."""
        return self._reached

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self._runner.start()

    def stop(self) -> None:
        """Stop after the send in progress (if any) has finished or failed."""
        # A send is bounded by its deadline; a thread still inside one after that is
        # wedged, and is left behind (a daemon) rather than holding up the stop.
        if not self._runner.stop(self.policy.stall_s):
            log.error(
                "sink %s: the forwarder did not stop; leaving it",
                self.name,
                extra={"SINK": self.name},
            )
            return
        self._wind_down()
        self.sink.close()

    def _wind_down(self) -> None:
        """Between the thread's end and the sink's close."""

    def alive(self) -> bool:
        """For the watchdog: the thread runs and is not stuck in one step (a send has its
        own deadline, so a step far longer than that is a hang, not a slow far end)."""
        return self._runner.alive()

    # ---------------------------------------------------------------- what the runner calls

    def version(self) -> int:
        return self.spool.version

    def advance(self, now: float) -> float | None:
        step = self.step(now)
        if step is Step.IDLE or step is Step.FLYING:
            return None
        if step is Step.WAIT or step is Step.RETRY:
            return max(self.next_attempt - self._clock(), 0.0)
        return 0.0

    def sleep(self, version: int, timeout: float | None, stop: threading.Event) -> None:
        """Until new work (``timeout`` None) or for ``timeout`` seconds (a retry is due
        then: new work does not end it); the sink's own wait if it has one."""
        if timeout is None:
            self._idle(version, stop)
        elif self._waiter is None:
            stop.wait(timeout)
        else:
            deadline = self._clock() + timeout
            while not stop.is_set() and (left := deadline - self._clock()) > 0:
                self._waiter.wait(left)

    def wake(self) -> None:
        self.spool.notify()
        if self._waiter is not None:
            self._waiter.wake()

    def _idle(self, version: int, stop: threading.Event) -> None:
        if self._waiter is None:
            self.spool.wait_for_change(version, None)
            return
        unsubscribe = self.spool.on_change(self._waiter.wake)
        try:
            # A change between the lease and the subscription called no wake(): look
            # before sleeping, or that event would wait for the next one.
            if self.version() == version and not stop.is_set():
                self._waiter.wait(None)
        finally:
            unsubscribe()
