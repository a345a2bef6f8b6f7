"""Every read of the spool file: a sink's row and its pending events, dead letters, device
commands, and what ``relay status`` shows. Functions of a connection or cursor; the caller
serialises its use (the ``Spool``'s reader lock, or the writer's transaction).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.errors import SpoolError
from relay.event import Command, Event
from relay.spool.figures import unfolded_bytes, unfolded_tallies
from relay.spool.file import free_bytes
from relay.spool.model import (
    BrokerDrops,
    DeadLetter,
    Record,
    SinkRow,
    SinkStats,
    SpoolStats,
    Tallies,
    Wear,
)
from relay.spool.overlay import Overlay
from relay.spool.schema import (
    BROKER_KEYS,
    COMMAND_COLUMNS,
    PENDING,
    QUEUED,
    RUNNING,
    WEAR_KEYS,
)

Conn = sqlite3.Connection | sqlite3.Cursor

# ------------------------------------------------------------------ sinks


def sink_row(c: Conn, sink: str) -> SinkRow:
    """``sink``'s row; ``SpoolError`` for a sink the file does not know."""
    row = c.execute(
        "SELECT cursor, head_seq, attempts, failures FROM sinks WHERE name=?", (sink,)
    ).fetchone()
    if row is None:
        raise SpoolError(f"unknown sink {sink!r}")
    return SinkRow(*row)


def pending(c: Conn, sink: str, cursor: int, limit: int) -> list[tuple[int, bytes, float]]:
    """(seq, body, spooled_at) of the first ``limit`` events after ``cursor`` for ``sink``."""
    rows: list[tuple[int, bytes, float]] = c.execute(
        f"SELECT seq, body, spooled_at {PENDING} ORDER BY seq LIMIT ?", (cursor, sink, limit)
    ).fetchall()
    return rows


def records(rows: list[tuple[int, bytes, float]]) -> tuple[list[Record], int | None]:
    """The events of ``rows`` up to the first that is not one, and that one's seq."""
    out = []
    for seq, body, spooled_at in rows:
        try:
            out.append(Record(seq, Event.from_json(body), spooled_at))
        except ValueError:
            return out, seq
    return out, None


def pending_count(c: Conn, sink: str, cursor: int) -> int:
    return int(c.execute(f"SELECT count(*) {PENDING}", (cursor, sink)).fetchone()[0])


# ------------------------------------------------------------------ dead letters


def dl_filter(sink: str | None, ids: Sequence[str]) -> tuple[str, list[Any]]:
    """A WHERE clause over dead letters: this sink's, these ids (both optional)."""
    clauses, args = [], []
    if sink is not None:
        clauses.append("sink = ?")
        args.append(sink)
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), args


def dead_letters(c: Conn, sink: str | None, ids: Sequence[str]) -> list[DeadLetter]:
    where, args = dl_filter(sink, ids)
    rows = c.execute(
        f"SELECT sink, seq, id, body, reason, attempts, dead_at FROM dead_letters{where} "
        "ORDER BY sink, seq",
        args,
    ).fetchall()
    return [DeadLetter(*r) for r in rows]


# ------------------------------------------------------------------ device commands


def running_commands(c: Conn) -> list[Command]:
    return _commands(c, "state = ?", (RUNNING,))


def next_command(c: Conn) -> Command | None:
    found = _commands(c, "state = ? ORDER BY seq LIMIT 1", (QUEUED,))
    return found[0] if found else None


def command_state(c: Conn, command_id: str) -> tuple[str, str | None, str | None] | None:
    """(state, status, error) of a command, or None if unknown."""
    row = c.execute(
        "SELECT state, status, error FROM commands WHERE id=?", (command_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _commands(c: Conn, where: str, args: tuple[object, ...]) -> list[Command]:
    rows = c.execute(f"SELECT {COMMAND_COLUMNS} FROM commands WHERE {where}", args).fetchall()
    return [Command(i, d, a, json.loads(g), s, r) for i, d, a, g, s, r in rows]


# ------------------------------------------------------------------ statistics


def spool_stats(
    c: Conn, *, path: str, durability: str, max_bytes: int, unsettled: Overlay | None = None
) -> SpoolStats:
    """The statistics of the spool file.

    ``path``, ``durability`` and ``max_bytes`` are the caller's settings, reported as given;
    the free space is that of ``path``'s disk. ``unsettled``: what this process wrote that
    may not be committed yet (acks, retry counters).
    """
    unsettled = unsettled or Overlay()
    meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    rows = c.execute("SELECT count(*) FROM events").fetchone()[0]
    sinks = [
        _sink_stats(c, row, unsettled)
        for row in c.execute(
            "SELECT name, cursor, head_seq, attempts, failures, last_error, last_error_at, "
            "delivered FROM sinks ORDER BY name"
        ).fetchall()
    ]
    free = None if durability == "memory" else free_bytes(Path(path).parent)
    return SpoolStats(
        path,
        durability,
        meta["bytes"] + unfolded_bytes(c),
        max_bytes,
        rows,
        meta["dropped"],
        sinks,
        free,
        _broker_drops(meta),
        _wear(meta),
    )


def _wear(meta: dict[str, int]) -> Wear | None:
    if "wear_at" not in meta:
        return None
    per_event, window_s, at = (meta[k] for k in WEAR_KEYS)
    return Wear(per_event, window_s, float(at))


def broker_drops(c: Conn) -> BrokerDrops | None:
    """What relay saw of its broker dropping messages; None if it never watched one."""
    marks = ",".join("?" * len(BROKER_KEYS))
    return _broker_drops(
        dict(c.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", BROKER_KEYS))
    )


def _broker_drops(meta: dict[str, int]) -> BrokerDrops | None:
    if "broker_dropped" not in meta:
        return None
    counter, dropped, dropping, since, last, before, visible = (meta[k] for k in BROKER_KEYS)
    return BrokerDrops(
        counter=None if counter < 0 else counter,
        dropped=dropped,
        dropping=bool(dropping),
        since=float(since) if since else None,
        last_drop_at=float(last) if last else None,
        dropped_before=before,
        visible=None if visible < 0 else bool(visible),
    )


def _sink_stats(c: Conn, row: tuple[Any, ...], unsettled: Overlay) -> SinkStats:
    name, cursor, head_seq, attempts, failures, last_error, last_error_at, delivered = row
    counters = unsettled.row(name, SinkRow(cursor, head_seq, attempts, failures))
    cursor = counters.cursor
    last_error, last_error_at = unsettled.error(name) or (last_error, last_error_at)
    head = c.execute(
        f"SELECT seq, spooled_at {PENDING} ORDER BY seq LIMIT 1", (cursor, name)
    ).fetchone()
    dead = c.execute("SELECT count(*) FROM dead_letters WHERE sink=?", (name,)).fetchone()[0]
    head_attempts = counters.counters_for(head[0])[0] if head else 0
    return SinkStats(
        name, pending_count(c, name, cursor), head[1] if head else None, head_attempts,
        last_error, last_error_at, delivered, dead,
    )  # fmt: skip


def tallies(c: Conn) -> Tallies:
    """The counts ``meta`` keeps as "ingested:<source>" and "rejected:<source>", with the
    events stored since the figures were last folded (relay.spool.figures)."""
    found: dict[str, dict[str, int]] = {"ingested": {}, "rejected": {}}
    for key, value in c.execute("SELECT key, value FROM meta WHERE key LIKE '%:%'"):
        what, _, source = key.partition(":")
        if what in found:
            found[what][source] = value
    for source, count in unfolded_tallies(c).items():
        found["ingested"][source] = found["ingested"].get(source, 0) + count
    return Tallies(found["ingested"], found["rejected"])


def newcomers(c: Conn, names: Sequence[str]) -> list[SinkStats]:
    """Statistics of the sinks in ``names`` the file does not know yet, as they will start
    when the agent registers them (``Txn.register``): the first sinks ever registered take
    what producers queued before (``relay push`` before the agent ever ran); a later one
    starts after the newest event. For ``relay status`` before ``relay run``."""
    known = {row[0] for row in c.execute("SELECT name FROM sinks")}
    first_ever = c.execute("SELECT value FROM meta WHERE key='sinks_seen'").fetchone()[0] == 0
    found = []
    for name in (n for n in names if n not in known):
        head = c.execute(f"SELECT spooled_at {PENDING} ORDER BY seq LIMIT 1", (0, name)).fetchone()
        dead = c.execute("SELECT count(*) FROM dead_letters WHERE sink=?", (name,)).fetchone()[0]
        depth = pending_count(c, name, 0) if first_ever else 0
        oldest = head[0] if first_ever and head else None
        found.append(SinkStats(name, depth, oldest, 0, None, None, 0, dead))
    return found
