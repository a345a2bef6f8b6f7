"""The device command queue's rows, written in the writer's transaction (functions of a
:class:`~relay.spool.txn.Txn`); ``relay.spool.reads`` reads them. A command is recorded
before it runs, marked running, then done with its outcome event in the same commit; the
last ``KEEP_DONE`` finished ones stay, so that a repeated id is recognised.
"""

from __future__ import annotations

import json
import sqlite3

from relay.event import Command, Event
from relay.spool.model import SourceKey
from relay.spool.schema import COMMAND_COLUMNS, DONE, KEEP_KEYED, QUEUED, RUNNING
from relay.spool.txn import Txn

KEEP_DONE = 10_000  # finished commands remembered, so that a repeated id is recognised


def record(t: Txn, cmd: Command, key: SourceKey | None = None) -> bool:
    """Queue ``cmd``; False (and nothing stored) when its id was seen before, or when
    ``key`` says the producer sent it before and it is recorded already."""
    t.flush()
    at_seq = t.figures.high_water()
    if key is not None and key.resent:
        seen = t.c.execute(
            "SELECT 1 FROM commands WHERE mid = ? AND digest = ? AND at_seq > ? LIMIT 1",
            (key.id, key.digest, at_seq - KEEP_KEYED),
        ).fetchone()
        if seen is not None:
            return False
    mid, digest = (key.id, key.digest) if key is not None else (None, None)
    try:
        t.c.execute(
            f"INSERT INTO commands ({COMMAND_COLUMNS}, state, mid, digest, at_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cmd.id,
                cmd.device,
                cmd.action,
                json.dumps(cmd.args),
                cmd.source,
                cmd.received_at,
                QUEUED,
                mid,
                digest,
                at_seq,
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
