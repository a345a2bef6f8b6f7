"""What ``relay status`` shows: the spool's size and, per sink, its backlog and last error."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from relay.spool.file import free_bytes
from relay.spool.model import SinkStats, SpoolStats, Tallies
from relay.spool.txn import PENDING


def spool_stats(
    conn: sqlite3.Connection, *, path: str, durability: str, max_bytes: int
) -> SpoolStats:
    """The statistics of the spool file open as ``conn`` (the caller serialises its use).

    ``path``, ``durability`` and ``max_bytes`` are the caller's settings, reported as given;
    the free space is that of ``path``'s disk.
    """
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    sinks = [
        _sink_stats(conn, row)
        for row in conn.execute(
            "SELECT name, cursor, head_seq, attempts, last_error, last_error_at, "
            "delivered FROM sinks ORDER BY name"
        ).fetchall()
    ]
    free = None if durability == "memory" else free_bytes(Path(path).parent)
    return SpoolStats(
        path, durability, meta["bytes"], max_bytes, rows, meta["dropped"], sinks, free
    )


def _sink_stats(conn: sqlite3.Connection, row: tuple[Any, ...]) -> SinkStats:
    name, cursor, head_seq, attempts, last_error, last_error_at, delivered = row
    depth = conn.execute(f"SELECT count(*) {PENDING}", (cursor, name)).fetchone()[0]
    head = conn.execute(
        f"SELECT seq, spooled_at {PENDING} ORDER BY seq LIMIT 1", (cursor, name)
    ).fetchone()
    dead = conn.execute("SELECT count(*) FROM dead_letters WHERE sink=?", (name,)).fetchone()[0]
    on_head = head is not None and head[0] == head_seq
    return SinkStats(
        name, depth, head[1] if head else None, attempts if on_head else 0,
        last_error, last_error_at, delivered, dead,
    )  # fmt: skip


def tallies(conn: sqlite3.Connection) -> Tallies:
    """The counts ``Txn`` keeps in ``meta`` as "ingested:<source>" and "rejected:<source>"."""
    found: dict[str, dict[str, int]] = {"ingested": {}, "rejected": {}}
    for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE '%:%'"):
        what, _, source = key.partition(":")
        if what in found:
            found[what][source] = value
    return Tallies(found["ingested"], found["rejected"])
