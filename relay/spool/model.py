"""What the spool hands out: leased records, dead letters, statistics. Plain data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.errors import SpoolError
from relay.event import Event

Durability = Literal["full", "normal", "memory"]
WhenFull = Literal["reject", "drop_oldest"]
Done = Callable[[SpoolError | None], None]


@dataclass(frozen=True, slots=True)
class SourceKey:
    """A producer's own key for a message it may send again (MQTT: the packet id, valid in
    one session, and a digest of the message). ``resent``: the producer says it may have
    sent it before (MQTT's DUP flag); only then is the key looked up, so a packet id the
    broker gives to a new message is never taken for an old one."""

    id: int
    digest: bytes
    resent: bool


# Dead letters that belong to no sink (neither is a valid sink name, so none can clash):
INGEST_REJECTS = "@ingest"  # messages refused at the door (over max_payload, topic not UTF-8)
COMMAND_REJECTS = "@commands"  # device commands that cannot be understood (MQTT, AMQP)


@dataclass(frozen=True)
class SinkRow:
    """A sink's row: its cursor, and the failure counters of the event at ``head_seq``."""

    cursor: int
    head_seq: int
    attempts: int
    failures: int

    def counters_for(self, seq: int) -> tuple[int, int]:
        """(attempts, failures) of event ``seq``: the counters belong to one head, and for
        any other event (the head moved on) they start from zero."""
        return (self.attempts, self.failures) if seq == self.head_seq else (0, 0)


@dataclass(frozen=True)
class Record:
    """An event leased from the spool, with where it sits and when it was stored."""

    seq: int
    event: Event
    spooled_at: float


@dataclass(frozen=True)
class Lease:
    """The head of a sink's queue (``records``, oldest first) and the head's failure counts;
    ``cursor``: the seq the sink's queue starts after (its last delivered event)."""

    sink: str
    records: list[Record]
    attempts: int
    failures: int
    cursor: int = 0


@dataclass(frozen=True)
class DeadLetter:
    sink: str
    seq: int
    event_id: str
    body: bytes
    reason: str
    attempts: int
    dead_at: float


@dataclass(frozen=True)
class SinkStats:
    name: str
    depth: int
    oldest_at: float | None
    attempts: int
    last_error: str | None
    last_error_at: float | None
    delivered: int
    dead_letters: int


@dataclass(frozen=True)
class BrokerDrops:
    """What relay saw of its MQTT broker dropping messages (``relay.mqtt.drops``)."""

    counter: int | None = None  # the broker's own drop counter, as last seen
    dropped: int = 0  # what relay saw that counter rise by, in all
    dropping: bool = False  # it rose, and has not been steady since
    since: float | None = None  # wall time the current (or the last) rise began
    last_drop_at: float | None = None  # wall time of the last rise
    dropped_before: int = 0  # ``dropped`` when the current (or the last) rise began
    visible: bool | None = None  # the broker's $SYS figures reach relay (None: not known)


@dataclass(frozen=True)
class Wear:
    """Bytes the agent wrote to storage per event it stored (``relay.spool.wear``)."""

    bytes_per_event: int
    window_s: int  # measured over this many seconds (up to an hour)
    at: float  # wall time of the measurement


@dataclass(frozen=True)
class SpoolStats:
    path: str
    durability: str
    bytes: int
    max_bytes: int
    rows: int
    dropped: int
    sinks: list[SinkStats]
    disk_free: int | None = None  # bytes free on the disk holding the file (None: in memory)
    broker: BrokerDrops | None = None  # None: relay never watched an MQTT broker
    wear: Wear | None = None  # None: the agent has not measured it yet


@dataclass(frozen=True)
class Tallies:
    """Events stored in the file since it was created, by source ("mqtt", "gpio", "push",
    "command", "amqp", "other"), whichever process stored them; ``rejected``: refused at the
    door (oversize, a topic that is not UTF-8) and kept as dead letters instead."""

    ingested: dict[str, int]
    rejected: dict[str, int]
