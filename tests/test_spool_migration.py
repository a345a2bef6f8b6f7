"""A spool file made by the release before this one (schema 2: events with AUTOINCREMENT, 4 KiB
pages, the figures written by every commit; tests/fixtures/spool-v2.db, made by relay
2053531) is migrated in place when the agent opens it: the events table without
AUTOINCREMENT (the high water kept), 1 KiB pages, and everything in it as it was."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from relay.event import Event
from relay.spool import Spool
from relay.spool.schema import PAGE_SIZE, SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "spool-v2.db"


@pytest.fixture
def old(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(FIXTURE, state / "spool.db")
    return state


def pragma(state: Path, name: str) -> object:
    with closing(sqlite3.connect(state / "spool.db")) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_the_agent_migrates_an_old_file_and_keeps_all_of_it(old: Path) -> None:
    assert (pragma(old, "user_version"), pragma(old, "page_size")) == (2, 4096)
    with Spool.open(old, check=True) as spool:
        spool.register_sinks(["cloud", "bus"])
        cloud, bus = spool.lease("cloud", 100), spool.lease("bus", 100)
        assert [r.event.payload["n"] for r in cloud.records] == [4, 5, 6, 7, 8, 9]
        assert (cloud.attempts, cloud.failures) == (1, 0)  # the head's failed attempt
        assert [r.event.payload["n"] for r in bus.records] == list(range(1, 10))
        [dead] = spool.dead_letters("bus")
        assert dead.reason == "HTTP 400: bad"
        assert spool.next_command() is not None
        stats = spool.stats()
        assert stats.rows == 10
        assert spool.tallies().ingested == {"mqtt": 6, "push": 2, "gpio": 2}
        spool.put(Event.new(node="new", source="push", name="door", payload={"n": 10}))
        newest = spool.lease("cloud", 100).records[-1]
        assert newest.event.payload["n"] == 10 and newest.seq == 11  # after the old ones
        assert spool.tallies().ingested["push"] == 3
    assert (pragma(old, "user_version"), pragma(old, "page_size")) == (SCHEMA_VERSION, PAGE_SIZE)
    with closing(sqlite3.connect(old / "spool.db")) as conn:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
        assert "AUTOINCREMENT" not in ddl
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        real = conn.execute(
            "SELECT (SELECT sum(length(body) + 64) FROM events) + "
            "(SELECT sum(length(body) + length(reason) + 64) FROM dead_letters)"
        ).fetchone()[0]
    with Spool.open(old) as spool:
        assert spool.stats().bytes == real  # the size cap's count, exact


def test_a_tool_migrates_the_tables_and_keeps_the_pages(old: Path) -> None:
    """relay push on an old file: the schema moves on; the page size is the agent's to
    change (VACUUM wants the file to itself), and the file works as it is meanwhile."""
    with Spool.open(old) as spool:
        spool.put(Event.new(node="new", source="push", name="door", payload={"n": 10}))
    assert (pragma(old, "user_version"), pragma(old, "page_size")) == (SCHEMA_VERSION, 4096)
    with Spool.open(old, check=True) as spool:
        spool.register_sinks(["cloud", "bus"])
        assert spool.lease("cloud", 100).records[-1].seq == 11
    assert pragma(old, "page_size") == PAGE_SIZE


def test_a_new_file_has_small_pages_and_no_autoincrement(tmp_path: Path) -> None:
    with Spool.open(tmp_path) as spool:
        spool.register_sinks(["a"])
        for n in range(3):
            spool.put(Event.new(node="n", source="push", name="x", payload=n))
    assert (pragma(tmp_path, "user_version"), pragma(tmp_path, "page_size")) == (4, PAGE_SIZE)
    with closing(sqlite3.connect(tmp_path / "spool.db")) as conn:
        assert conn.execute("SELECT * FROM sqlite_sequence WHERE name = 'events'").fetchall() == []
