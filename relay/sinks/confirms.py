"""Publisher-confirm bookkeeping for the AMQP sink: which events of a window the broker took.

Pure: no pika, no I/O, no clock. ``relay.sinks.amqp`` feeds a :class:`ConfirmWindow` what the
broker says (basic.ack, basic.nack, basic.return) and asks it how the window ended, so the
tricky part of windowed confirms can be tested without a broker (tests/test_amqp_sink.py).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Outcome(enum.Enum):
    """What the broker said about one publish."""

    ACKED = "acked"
    NACKED = "nacked"
    RETURNED = "returned"


class ConfirmWindow:
    """Publisher-confirm bookkeeping for one channel. Pure: the sink feeds it what the broker
    says, and asks it which events at the front of the window were taken.

    In confirm mode a channel numbers its publishes 1, 2, 3... (delivery tags); basic.ack and
    basic.nack name one tag, or with ``multiple`` every tag up to it. A window is the run of
    publishes one ``send`` waits for. When a send gave up while its channel stayed open
    (broker blocked, no confirm in time), the next window takes over its unanswered tail if
    the batch starts with exactly those events: they are awaited, not published twice.
    Otherwise answers about earlier publishes arrive late and are ignored.
    """

    def __init__(self) -> None:
        self._next_tag = 1  # the tag the channel gives its next publish
        self._first = 1  # the tag of the window's first publish
        self._ids: list[str] = []  # the window's events, in publish order
        self._outcomes: list[Outcome | None] = []
        self._index: dict[str, int] = {}  # message id -> position in the window
        self._reasons: dict[int, str] = {}  # position -> why it was returned
        self._acked = 0  # length of the run of acked events at the front

    def new_channel(self) -> None:
        """A new channel numbers its publishes from 1 again; nothing carries over."""
        self._next_tag = self._first = 1
        self._ids, self._outcomes, self._index, self._reasons, self._acked = [], [], {}, {}, 0

    def begin(self, ids: Sequence[str]) -> int:
        """Start a window for the events ``ids``; return how many at its front are already
        published (the caller publishes the rest, recording each with :meth:`published`)."""
        # Where the batch starts in the last window: past what that send reported delivered,
        # and maybe past more (acked since), but every later publish must be in the batch.
        start = self._index.get(ids[0], len(self._ids)) if ids else len(self._ids)
        tail, outcomes = self._ids[start:], self._outcomes[start:]
        if tail and list(ids[: len(tail)]) == tail and set(outcomes) <= {None, Outcome.ACKED}:
            self._first += start
        else:
            self._first, tail, outcomes = self._next_tag, [], []
        self._ids, self._outcomes, self._reasons = tail, outcomes, {}
        self._index = {message_id: i for i, message_id in enumerate(tail)}
        self._acked = 0
        self._advance()
        return len(tail)

    def published(self, message_id: str) -> None:
        """Record the channel's next publish (call in publish order)."""
        self._index[message_id] = len(self._outcomes)
        self._ids.append(message_id)
        self._outcomes.append(None)
        self._next_tag += 1

    def confirmed(self, tag: int, *, multiple: bool, ok: bool) -> None:
        """basic.ack (``ok``) or basic.nack of ``tag``, or of every tag up to it."""
        end = tag - self._first  # the position of ``tag``; negative: an earlier window's
        start = 0 if multiple else end
        for i in range(max(start, 0), min(end, len(self._outcomes) - 1) + 1):
            if self._outcomes[i] is None:  # a return came first: it stands (see returned)
                self._outcomes[i] = Outcome.ACKED if ok else Outcome.NACKED
        self._advance()

    def _advance(self) -> None:
        while self._acked < len(self._outcomes) and self._outcomes[self._acked] is Outcome.ACKED:
            self._acked += 1

    def returned(self, message_id: str | None, reason: str) -> None:
        """basic.return of the message ``message_id``: routed to no queue.

        RabbitMQ sends basic.return *before* basic.ack for a mandatory message it could not
        route, and then acks it all the same: the return is what counts.
        """
        i = self._index.get(message_id or "")
        if i is not None and self._outcomes[i] is None:
            self._outcomes[i] = Outcome.RETURNED
            self._reasons[i] = reason

    @property
    def delivered(self) -> int:
        """How many events at the front of the window are acked so far."""
        return self._acked

    def result(self) -> tuple[int, Outcome | None, str] | None:
        """None while undecided; else ``(delivered, outcome, reason)``: ``delivered`` events
        at the front were acked, and ``outcome`` is what happened to the next one (None: the
        whole window was acked). Decided as soon as that next event has its answer: the ones
        after it are sent again anyway, to keep the order."""
        if self._acked == len(self._outcomes):
            return self._acked, None, ""
        outcome = self._outcomes[self._acked]
        if outcome is None:
            return None
        return self._acked, outcome, self._reasons.get(self._acked, "")
