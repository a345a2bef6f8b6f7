"""Device commands in the spool file: recorded before they run, so that none runs twice.

A command is ``queued`` when recorded, ``running`` from just before its driver is called,
and ``done`` with a status once it ended; the outcome event is stored in the same
transaction. The id is unique: a command whose id was seen before is not recorded again. The
newest finished commands are remembered (``KEEP_DONE``) for that check.
"""

from __future__ import annotations

import json
import sqlite3

from relay.event import Command, Event
from relay.spool.txn import Txn

QUEUED, RUNNING, DONE = "queued", "running", "done"
KEEP_DONE = 10_000

MIGRATION = [
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
]
_COLUMNS = "id, device, action, args, source, received_at"


def record(t: Txn, cmd: Command) -> bool:
    """Queue ``cmd``; False (and nothing stored) when its id was seen before."""
    t.flush()
    try:
        t.c.execute(
            f"INSERT INTO commands ({_COLUMNS}, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                cmd.id,
                cmd.device,
                cmd.action,
                json.dumps(cmd.args),
                cmd.source,
                cmd.received_at,
                QUEUED,
            ),
        )
    except sqlite3.IntegrityError:
        return False
    t.commands_added = True
    return True


def start(t: Txn, command_id: str) -> None:
    t.c.execute("UPDATE commands SET state=? WHERE id=? AND state=?", (RUNNING, command_id, QUEUED))


def finish(t: Txn, command_id: str, status: str, error: str | None, outcome: Event) -> None:
    """Mark the command done and store its outcome event, in the same commit."""
    t.c.execute(
        "UPDATE commands SET state=?, status=?, error=?, finished_at=? WHERE id=?",
        (DONE, status, error, t.now, command_id),
    )
    t.insert([outcome], force=True)  # an outcome is never refused for want of room
    t.c.execute(
        "DELETE FROM commands WHERE state=? AND seq <= "
        "(SELECT seq FROM commands WHERE state=? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (DONE, DONE, KEEP_DONE),
    )


def running(c: sqlite3.Connection | sqlite3.Cursor) -> list[Command]:
    return _commands(c, "state = ?", (RUNNING,))


def next_queued(c: sqlite3.Connection) -> Command | None:
    found = _commands(c, "state = ? ORDER BY seq LIMIT 1", (QUEUED,))
    return found[0] if found else None


def state(c: sqlite3.Connection, command_id: str) -> tuple[str, str | None, str | None] | None:
    """(state, status, error) of a command, or None if unknown."""
    row = c.execute(
        "SELECT state, status, error FROM commands WHERE id=?", (command_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _commands(
    c: sqlite3.Connection | sqlite3.Cursor, where: str, args: tuple[object, ...]
) -> list[Command]:
    rows = c.execute(f"SELECT {_COLUMNS} FROM commands WHERE {where}", args).fetchall()
    return [Command(i, d, a, json.loads(g), s, r) for i, d, a, g, s, r in rows]
