"""What this process wrote to a sink's row that may not be committed yet: acks and retry
counters. Both are written without an fsync and may wait a moment for a commit to share
(``relay.spool.writer``); meanwhile this process's leases and statistics start from here, so
that a sink draining fast, or a far end failing one request in five, costs no commit each.
Only the sink's forwarder writes a sink's entries, so each has one writer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.spool.model import SinkRow


@dataclass(frozen=True)
class Head:
    """A sink's head as its last failed attempt left it."""

    row: SinkRow  # head_seq, attempts, failures (cursor: not this one's business)
    error: str
    at: float  # wall time of the failure


class Overlay:
    def __init__(self) -> None:
        self._acked: dict[str, int] = {}
        self._heads: dict[str, Head] = {}

    def ack(self, sink: str, upto_seq: int) -> None:
        self._acked[sink] = max(self._acked.get(sink, 0), upto_seq)

    def retry(
        self, sink: str, file_row: SinkRow, seq: int, error: str, *, permanent: bool, now: float
    ) -> tuple[int, int]:
        """A failed attempt at ``seq``: its (attempts, failures) counted from what this
        process last wrote, else from the file's row."""
        base = self.row(sink, file_row)
        attempts, failures = base.counters_for(seq)
        attempts, failures = attempts + 1, failures + int(permanent)
        self._heads[sink] = Head(SinkRow(0, seq, attempts, failures), error[:1000], now)
        return attempts, failures

    def forget(self, sink: str) -> None:
        """The head was dead-lettered (a committed write): the file knows best again."""
        self._heads.pop(sink, None)

    def row(self, sink: str, file_row: SinkRow) -> SinkRow:
        """``file_row`` with what this process wrote since: the cursor, the counters."""
        head = self._heads.get(sink)
        row = file_row if head is None else replace(head.row, cursor=file_row.cursor)
        return replace(row, cursor=max(row.cursor, self._acked.get(sink, 0)))

    def error(self, sink: str) -> tuple[str, float] | None:
        head = self._heads.get(sink)
        return None if head is None else (head.error, head.at)

    def copy(self) -> Overlay:
        """A snapshot, for a reader on another thread."""
        other = Overlay()
        other._acked, other._heads = dict(self._acked), dict(self._heads)
        return other
