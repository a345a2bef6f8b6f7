"""The spool file on disk: opening it, its pragmas, free space, and what to do with a bad
file. Its tables are ``relay.spool.schema``'s."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from relay.errors import DiskUnavailable, SpoolError
from relay.spool.model import Durability
from relay.spool.schema import PAGE_SIZE, migrate

log = logging.getLogger(__name__)

# SQLite checkpoints the WAL into the database once it holds 1000 pages (~4 MB); until then
# it only grows. With less room than that on the disk, the WAL alone can fill it, and then
# its pages cannot be copied back (the database file would have to grow): no commit would
# succeed again, however little the spool holds. Below LOW_SPACE free, the WAL is
# checkpointed every LOW_SPACE_PAGES pages instead.
LOW_SPACE = 16 * 1024 * 1024
LOW_SPACE_PAGES = 16
SMALL_FILE = 8 * 1024 * 1024  # a file up to this size is rewritten with PAGE_SIZE pages


def connections(
    state_dir: Path, durability: Durability, *, check: bool
) -> tuple[sqlite3.Connection, sqlite3.Connection | None, Path | None]:
    """The writer's connection, the readers' (None: the writer's serves both) and the file
    (None: in memory) of the spool in ``state_dir``."""
    if durability == "memory":
        log.warning('spool durability is "memory": queued events are lost when relay stops')
        return open_memory(), None, None
    path = state_dir / "spool.db"
    return open_file(path, durability, check=check), open_reader(path), path


def open_file(path: Path, durability: Durability, *, check: bool) -> sqlite3.Connection:
    """Open (creating if needed) the spool at ``path``, ready for use.

    With ``check``, a file that fails ``PRAGMA quick_check`` is moved aside as
    ``spool.db.corrupt-<time>`` and replaced by an empty one, reported once at CRITICAL.
    """
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(path, f"cannot create state_dir {path.parent}: {exc.strerror}") from None
    _set_aside_stray_journal(path)
    new = not path.exists()
    conn = _connect(path)
    if new:  # before anything is written: a file's page size is set by its first table
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    try:
        problem = _check(conn) if check else None
    except sqlite3.DatabaseError as exc:  # not the file: the disk (full, read-only, failing)
        conn.close()
        raise _error(path, f"cannot open spool {path}: {explain(path, exc)}") from None
    if problem:
        conn.close()
        _quarantine(path, problem)
        conn = _connect(path)
    try:
        if check and not new:
            _small_pages(conn, path)
        _configure(conn, durability)
        migrate(conn, rebuild=_room_to_copy(path))
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _error(path, f"cannot open spool {path}: {explain(path, exc)}") from None
    free = free_bytes(path.parent)
    if free is not None and free < LOW_SPACE:
        keep_wal_small(conn)
        if check:
            log.warning(
                "only %.1f MB free on the disk holding %s: checkpointing often so that the "
                "WAL cannot fill it",
                free / 1e6,
                path,
            )
    return conn


def _small_pages(conn: sqlite3.Connection, path: Path) -> None:
    """A file made with larger pages (before relay used PAGE_SIZE) is rewritten with them,
    when it is small: VACUUM writes it about three times over, which is nothing for a spool
    a trickle keeps small, and a minute of SD card for a backlog of hundreds of MB, so a
    large file keeps its pages until a start finds it small."""
    size = path.stat().st_size
    if conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE or size > SMALL_FILE:
        return
    if (free_bytes(path.parent) or 0) < 3 * size:
        return
    # The page size of a file in WAL mode cannot change; VACUUM needs the file to itself.
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("VACUUM")
    log.info(
        "spool %s: rewritten with %d-byte pages (fewer bytes written per event)", path, PAGE_SIZE
    )


def _room_to_copy(path: Path) -> bool:
    """Whether the disk holds a second copy of the file (a table rebuilt is copied whole)."""
    size = path.stat().st_size if path.exists() else 0
    return (free_bytes(path.parent) or 0) > 2 * size + LOW_SPACE


def explain(path: Path, exc: sqlite3.Error) -> str:
    """SQLite's message, with what it does not say: that the disk is full or read-only
    (it reports either as "disk I/O error" or "unable to open database file" at times)."""
    trouble = disk_trouble(path.parent)
    return f"{exc} ({trouble})" if trouble else str(exc)


def disk_trouble(directory: Path) -> str | None:
    """What keeps ``directory``'s disk from being written (read-only, full), or None."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only file system"
    if st.f_bavail * st.f_frsize < 64 * 1024:
        return f"no space left on the disk holding {directory}"
    return None


def _error(path: Path, message: str) -> SpoolError:
    """``DiskUnavailable`` when the disk is full or read-only, else ``SpoolError``."""
    return DiskUnavailable(message) if disk_trouble(path.parent) else SpoolError(message)


def keep_wal_small(conn: sqlite3.Connection) -> None:
    """Checkpoint ``conn``'s WAL every few pages (see ``LOW_SPACE``)."""
    conn.execute(f"PRAGMA wal_autocheckpoint={LOW_SPACE_PAGES}")


def free_bytes(directory: Path) -> int | None:
    """What an unprivileged writer may still use on ``directory``'s disk; None if unknown."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def open_reader(path: Path) -> sqlite3.Connection:
    """A second connection to an open spool, for reads only."""
    conn = _connect(path)
    conn.execute("PRAGMA query_only=1")
    return conn


def open_memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    migrate(conn)
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # timeout: how long to wait for another process's write lock (relay push, relay dlq).
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    except sqlite3.Error as exc:
        raise _error(path, f"cannot open spool {path}: {explain(path, exc)}") from None


def _configure(conn: sqlite3.Connection, durability: Durability) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
    # FULL: every commit is fsync'd before a producer hears "stored" (survives a power cut).
    # NORMAL, in WAL mode: survives a crash of relay or of the OS, not a power cut.
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA journal_size_limit=8388608")  # an idle WAL shrinks back: less flash


def _check(conn: sqlite3.Connection) -> str | None:
    """What is wrong with the open file, or None when ``quick_check`` says ok.

    Raises ``sqlite3.DatabaseError`` when the file could not be checked for another reason
    than damage: a full disk (no room for the ``-shm`` file), a read-only one, an I/O
    error. Those are not the file's fault, and it must not be set aside for them.
    """
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return str(exc)
        raise
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3])


def _quarantine(path: Path, problem: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    lost = _count_rows(path)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    log.critical(
        "spool %s is corrupt (%s): moved it to %s and started an empty spool; %s",
        path,
        problem,
        aside,
        f"it held about {lost} undelivered events"
        if lost is not None
        else "how many events it held is unknown",
    )


def _count_rows(path: Path) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _set_aside_stray_journal(path: Path) -> None:
    """A -wal or -shm without its database would be replayed into a new, empty file."""
    if path.exists():
        return
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("-wal", "-shm"):
        stray = Path(str(path) + suffix)
        if stray.exists():
            aside = path.with_name(f"{path.name}{suffix}.stray-{stamp}")
            os.replace(stray, aside)
            log.critical("found %s without its database: moved it to %s", stray, aside)
