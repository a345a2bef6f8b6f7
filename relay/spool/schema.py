"""The spool file's tables, their migrations, and the SQL fragments the reads and the writes
share. Every ``CREATE`` of the spool is here.

    events        one row per event, in spool order (``seq``); ``sink`` set only on a replay
                  for one sink (``relay dlq retry``); ``mid`` and ``digest``: the producer's
                  key for a message it may send again (MQTT: packet id, hash of the message)
    sinks         per sink: its cursor (every event at or below it is done for the sink), and
                  the failure counters of its head (``head_seq``)
    dead_letters  events given up on, per sink, with the reason
    meta          counters: bytes held, events dropped for room, events stored per source
    commands      device commands, recorded before they run (``queued``, ``running``, ``done``),
                  with the same producer's key

``PRAGMA user_version`` is the schema version; :func:`migrate` brings an older file up to it
in place, one version per transaction.
"""

from __future__ import annotations

import sqlite3

from relay.spool.model import BrokerDrops

SCHEMA_VERSION = 4
# Bytes per page of a new file: SQLite writes whole pages, and an event's commit rewrites the
# page its row lands on (and one of the WAL's); 1 KiB pages write a quarter of 4 KiB's.
PAGE_SIZE = 1024

# Bytes charged per row on top of its body (keys, record header, index entry), so that the
# size cap tracks the file and not only the payloads.
ROW_OVERHEAD = 64

# Sources counted by name in the file's tallies; any other (``relay.push(source=...)`` takes
# any string) counts as "other", so that the tallies, and the metrics read from them, stay
# a handful of rows.
SOURCES = frozenset({"mqtt", "gpio", "push", "command", "amqp"})
# The rows not yet in the figures of meta (relay.spool.figures), and the source of a row.
FOLDED = (
    "FROM events WHERE seq > coalesce((SELECT value FROM meta WHERE key = 'folded_seq'), 0) "
    "AND sink IS NULL"
)
TALLY_SOURCE = "json_extract(CAST(body AS TEXT), '$.source')"

# A sink's pending events: after its cursor, for every sink or replayed for this one.
# Parameters: (cursor, sink).
PENDING = "FROM events WHERE seq > ? AND (sink IS NULL OR sink = ?)"
EVENT_BYTES = f"coalesce(sum(length(body) + {ROW_OVERHEAD}), 0)"
DL_BYTES = f"coalesce(sum(length(body) + length(reason) + {ROW_OVERHEAD}), 0)"

# The broker's drops as relay saw them (``relay.mqtt.drops``), as integers in ``meta``: a
# time is whole seconds (0: none), a figure not known is -1.
BROKER_KEYS = (
    "broker_counter",
    "broker_dropped",
    "broker_dropping",
    "broker_since",
    "broker_last_drop_at",
    "broker_dropped_before",
    "broker_visible",
)

# Rows with a producer's key (MQTT) among the newest KEEP_KEYED seqs stay after delivery: they
# recognise what the broker sends again after relay died between the commit and the ack.
# What can come again is what was committed but not acknowledged: a commit or two (at most
# 1024 operations each), far fewer than this. The broker gives a packet id to a new message
# only after the old one was acknowledged, counting up to 65535 before it reuses one, so a
# kept row's id cannot stand for a newer message (unless the broker's own state rolls back:
# a broker restored from its autosave after a crash may count from an earlier id).
KEEP_KEYED = 4096


def broker_values(d: BrokerDrops) -> tuple[int, ...]:
    """``d`` as the integers of ``BROKER_KEYS``."""
    return (
        -1 if d.counter is None else d.counter,
        d.dropped,
        int(d.dropping),
        int(d.since or 0),
        int(d.last_drop_at or 0),
        d.dropped_before,
        -1 if d.visible is None else int(d.visible),
    )


EVENTS_COLUMNS = (
    "seq INTEGER PRIMARY KEY, id TEXT NOT NULL, body BLOB NOT NULL, spooled_at REAL NOT NULL, "
    "sink TEXT, mid INTEGER, digest BLOB"
)

# Bytes the agent wrote per event stored, over how many seconds, and when (relay.spool.wear).
WEAR_KEYS = ("wear_bytes_per_event", "wear_window_s", "wear_at")

# A device command's states.
QUEUED, RUNNING, DONE = "queued", "running", "done"
COMMAND_COLUMNS = "id, device, action, args, source, received_at"

MIGRATIONS: dict[int, list[str]] = {
    # The statements that take user_version N to N + 1.
    0: [
        # seq is AUTOINCREMENT so that a number is never reused once rows were deleted: a
        # sink's cursor must never point past an event that arrives later.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            body BLOB NOT NULL,
            spooled_at REAL NOT NULL,
            sink TEXT
        )""",
        # Replays (relay dlq retry) are rare rows for one sink; this keeps finding them cheap.
        "CREATE INDEX events_replays ON events (sink, seq) WHERE sink IS NOT NULL",
        """CREATE TABLE sinks (
            name TEXT PRIMARY KEY,
            cursor INTEGER NOT NULL,
            head_seq INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_error_at REAL,
            delivered INTEGER NOT NULL DEFAULT 0,
            dead INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE dead_letters (
            sink TEXT NOT NULL,
            seq INTEGER NOT NULL,
            id TEXT NOT NULL,
            body BLOB NOT NULL,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            dead_at REAL NOT NULL,
            PRIMARY KEY (sink, seq)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta VALUES ('bytes', 0), ('dropped', 0), ('sinks_seen', 0)",
    ],
    1: [
        """CREATE TABLE commands (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            device TEXT NOT NULL,
            action TEXT NOT NULL,
            args TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at REAL NOT NULL,
            state TEXT NOT NULL,
            status TEXT,
            error TEXT,
            finished_at REAL
        )""",
        "CREATE INDEX commands_open ON commands (seq) WHERE state != 'done'",
    ],
    2: [
        # A message the broker sends again after relay stored it (and died before its ack)
        # is recognised by these, recorded in the same commit as the event.
        "ALTER TABLE events ADD COLUMN mid INTEGER",
        "ALTER TABLE events ADD COLUMN digest BLOB",
        "ALTER TABLE commands ADD COLUMN mid INTEGER",
        "ALTER TABLE commands ADD COLUMN digest BLOB",
        # The newest event seq when the command was recorded: how far back it lies in the
        # stream of messages (a command's outcome is an event, so the seq moves on).
        "ALTER TABLE commands ADD COLUMN at_seq INTEGER",
        # The figures in meta were written by every commit so far: all of them folded.
        "INSERT INTO meta VALUES ('folded_seq', "
        "(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events'))",
        "INSERT INTO meta VALUES ('seq_floor', 0)",
    ],
    3: [
        # events without AUTOINCREMENT (its sqlite_sequence page was written by every
        # insert); the high water it kept goes to meta (see relay.spool.figures).
        f"CREATE TABLE events_v4 ({EVENTS_COLUMNS})",
        "INSERT INTO events_v4 SELECT seq, id, body, spooled_at, sink, mid, digest FROM events",
        "UPDATE meta SET value = max(value, "
        "(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events')) "
        "WHERE key = 'seq_floor'",
        "DROP TABLE events",
        "ALTER TABLE events_v4 RENAME TO events",
        "DELETE FROM sqlite_sequence WHERE name = 'events'",
        "CREATE INDEX events_replays ON events (sink, seq) WHERE sink IS NOT NULL",
    ],
}
# A new file is made at SCHEMA_VERSION at once.
FRESH = [
    f"CREATE TABLE events ({EVENTS_COLUMNS})",
    *MIGRATIONS[0][1:],  # the replay index, sinks, dead_letters, meta
    *MIGRATIONS[1],  # commands
    *MIGRATIONS[2][2:5],  # commands' producer key and stream position
    "INSERT INTO meta VALUES ('folded_seq', 0), ('seq_floor', 0)",
]


def migrate(conn: sqlite3.Connection, *, rebuild: bool = True) -> None:
    """Bring the file open as ``conn`` to :data:`SCHEMA_VERSION`; ``sqlite3.DatabaseError``
    for a file made by a newer relay. A new file is made at it at once. Without
    ``rebuild``, a file at version 3 stays there (its events table would be copied whole,
    which needs room for a second one): version 3 works as it is."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this relay understands ({SCHEMA_VERSION})"
        )
    fresh = version == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
    if fresh:
        conn.execute("BEGIN IMMEDIATE")
        for statement in FRESH:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
        return
    while version < SCHEMA_VERSION and (rebuild or version < 3):
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")
