"""The durable spool: one SQLite file where every event waits until each sink has it.

Rows live in ``events`` in spool order (``seq``). Each sink has a cursor: every event at or
below it is done for that sink (delivered or dead-lettered). A sink leases the events after
its cursor, in order; ``ack`` moves the cursor, ``retry`` records a failure of the head,
``dead_letter`` copies the head to ``dead_letters`` with its reason and moves past it. Rows
every cursor has passed are deleted in batches, so the file does not grow. ``relay dlq
retry`` appends a dead letter again as a new row for that one sink, with the same event id.

Writes go through one writer thread that applies every queued operation in one transaction
(group commit) and only then reports each one done: no producer hears "stored" before the
commit that stored it has returned. Reads use a second connection under a lock of their own
(WAL lets them run during a commit; an in-memory spool has one connection, shared). Other
processes (``relay push``, ``relay dlq``) open the same file; SQLite's locks and ``BEGIN
IMMEDIATE`` serialise the writers, and the byte count lives in the file so the cap holds
across them.

    schema.py    every table, the migrations, and the SQL fragments reads and writes share
    model.py     what the spool hands out (records, leases, dead letters, stats)
    file.py      the file: opening it, pragmas, free space, corrupt-file handling
    reads.py     every read: sink rows and pending events, dead letters, commands, stats
    figures.py   the byte count and the tallies, folded into the file now and then
    wear.py      the bytes this process writes per event (/proc/self/io)
    chain.py     puts stored in order or not at all (the MQTT source's, per connection)
    overlay.py   acks and retry counters this process wrote, maybe not committed yet
    txn.py       every write (events, acks, retries, dead letters), inside one
                 group-commit transaction
    command_rows.py  the device command queue's writes, in that transaction
    writer.py    the writer thread: the bounded operation queue, group commit, acks
    inbox.py     the writer's queue
    changes.py   the wake-ups: version counters, waits and subscriptions
    spool.py     the thread-safe ``Spool`` that composes them: the public API
"""

from relay.spool.chain import Chain
from relay.spool.model import (
    COMMAND_REJECTS,
    INGEST_REJECTS,
    BrokerDrops,
    DeadLetter,
    Done,
    Durability,
    Lease,
    Record,
    SinkStats,
    SourceKey,
    SpoolStats,
    WhenFull,
)
from relay.spool.schema import ROW_OVERHEAD
from relay.spool.spool import Spool

__all__ = [
    "COMMAND_REJECTS",
    "INGEST_REJECTS",
    "ROW_OVERHEAD",
    "BrokerDrops",
    "Chain",
    "DeadLetter",
    "Done",
    "Durability",
    "Lease",
    "Record",
    "SinkStats",
    "SourceKey",
    "Spool",
    "SpoolStats",
    "WhenFull",
]
